/**
 * A real server for the failover test, run inside a server's namespace: answers every HTTP request with its name, so
 * a client sees which server the scheduler gave it. Args: NAME ADDRESS PORT. Prints "listening" when bound.
 */
const [name, hostname, port] = Deno.args;
Deno.serve({
  hostname,
  port: Number(port),
  onListen: () => console.log("listening"),
}, () => new Response(`${name}\n`, { headers: { "content-type": "text/plain" } }));
