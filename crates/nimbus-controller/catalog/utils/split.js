/**
 * split: splits the string `payload` into the array `lines`.
 * `separator` (optional) is the string to split on; by default lines are split
 * on newlines (LF or CRLF). Returns {lines, payload}.
 */
function main(params) {
    if (params.payload === undefined || params.payload === null) {
        return { error: 'split: the parameter "payload" is required' };
    }
    const text = String(params.payload);
    const separator = params.separator ? params.separator : /\r?\n/;
    const result = { lines: text.split(separator), payload: params.payload };
    console.log('split: returning ' + JSON.stringify(result));
    return result;
}
