/**
 * cat: like the unix command, joins the array `lines` into one newline-separated string.
 * Returns {lines, payload}; every other input field is dropped.
 */
function main(params) {
    const lines = Array.isArray(params.lines) ? params.lines : [];
    const result = { lines: lines, payload: lines.join('\n') };
    console.log('cat: returning ' + JSON.stringify(result));
    return result;
}
