/**
 * head: returns the first `num` entries (default 1) of the array `lines`,
 * as {lines, num}.
 */
function main(params) {
    const lines = Array.isArray(params.lines) ? params.lines : [];
    const num = params.num ? params.num : 1;
    const first = lines.slice(0, num);
    console.log('head: first ' + num + ' of ' + lines.length + ' line(s)');
    return { lines: first, num: num };
}
