/**
 * A real server for the failover test, run inside a server's namespace: answers every HTTP request with its name and
 * the address the connection came from (the scheduler box's own address: the scheduler is a full proxy), so a client
 * sees which server it was given and through which box. Args: NAME ADDRESS PORT. Prints "listening" when bound.
 */
const [name, hostname, port] = Deno.args;
Deno.serve(
  {
    hostname,
    port: Number(port),
    onListen: () => console.log("listening"),
  },
  (_request, info) =>
    new Response(`${name} ${info.remoteAddr.hostname}\n`, { headers: { "content-type": "text/plain" } }),
);
