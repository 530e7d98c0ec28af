// A wasm:http function in JavaScript: a wasi:http/proxy component built with componentize-js
// (StarlingMonkey). The handler is a service-worker style `fetch` event listener.
//
// Served on a web action it sees the HTTP request as sent (method, path, query, headers, body).
// Invoked with parameters it gets a POST whose body is the JSON parameters, and its JSON
// response body becomes the result. console.error lines become the activation's logs.

async function handle(request) {
  const url = new URL(request.url);
  const raw = await request.text();
  let params = {};
  try {
    const parsed = raw ? JSON.parse(raw) : {};
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) params = parsed;
  } catch {
    // Not JSON (a form post, plain text...): ignore the body.
  }
  const query = Object.fromEntries(url.searchParams);
  const name = params.name || query.name || 'stranger';
  console.error(`${request.method} ${url.pathname} for ${name}`);
  if (params.notFound || url.pathname.endsWith('/missing')) {
    return new Response('no such thing', { status: 404, headers: { 'content-type': 'text/plain' } });
  }
  const out = {
    greeting: `Hello, ${name}!`,
    language: 'javascript',
    method: request.method,
    path: url.pathname,
    query,
    bodyBytes: new TextEncoder().encode(raw).length,
    userAgent: request.headers.get('user-agent'),
  };
  return new Response(JSON.stringify(out), { headers: { 'content-type': 'application/json' } });
}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
