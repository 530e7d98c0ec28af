/**
 * sort: sorts the array `lines` with JavaScript's default ordering (as strings)
 * and returns {lines, length}.
 */
function main(params) {
    const lines = Array.isArray(params.lines) ? params.lines.slice() : [];
    console.log('sort: ' + lines.length + ' line(s) in');
    lines.sort();
    return { lines: lines, length: lines.length };
}
