/**
 * echo: returns every parameter it receives, unchanged.
 * Useful as a sequence step or to inspect what a trigger, rule or binding passes along.
 */
function main(params) {
    return params && typeof params === 'object' ? params : {};
}
