/**
 * date: returns the current date and time as an ISO-8601 string, {date}.
 */
function main() {
    const now = new Date();
    console.log('date: it is now ' + now.toISOString());
    return { date: now.toISOString() };
}
