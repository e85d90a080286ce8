/**
 * The client loop of the failover test, run inside the client's namespace: starts a new connection to ADDRESS:PORT
 * every EVERY ms (each one independent, so a lost one does not hold up the next), sends an HTTP request and reads the
 * server's name. A connection not answered within TIMEOUT ms counts as failed: shorter than TCP's first SYN
 * retransmission (1 s), so the time of the first success after a failover is when the VIP answered a fresh SYN.
 * Prints one JSON line per attempt: {"s": start, "e": end (epoch ms), "ok": bool, "server" and "via" (the scheduler's
 * address the server saw) | "error"}.
 * Args: ADDRESS PORT EVERY TIMEOUT. Runs until killed.
 */
const [hostname, port, every, timeout] = Deno.args;
const now = () => performance.timeOrigin + performance.now();
const REQUEST = new TextEncoder().encode(`GET / HTTP/1.1\r\nHost: ${hostname}\r\nConnection: close\r\n\r\n`);

function close(conn: Deno.TcpConn | undefined): void {
  try {
    conn?.close();
  } catch {
    // Closed already.
  }
}

async function attempt(): Promise<void> {
  const s = now();
  let conn: Deno.TcpConn | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      close(conn);
      reject(new Error("timeout"));
    }, Number(timeout));
  });
  const work = (async () => {
    conn = await Deno.connect({ hostname, port: Number(port) });
    await conn.write(REQUEST);
    const text = await new Response(conn.readable).text();
    const body = text.split("\r\n\r\n")[1]?.trim();
    if (!text.startsWith("HTTP/1.1 200") || !body) {
      throw new Error(`bad answer ${JSON.stringify(text.slice(0, 80))}`);
    }
    return body;
  })();
  try {
    const [server, via] = (await Promise.race([work, deadline])).split(" ");
    console.log(JSON.stringify({ s, e: now(), ok: true, server, via }));
  } catch (error) {
    // A connect that completes after the deadline is closed at once.
    work.then(() => {}, () => {}).finally(() => close(conn));
    const message = error instanceof Error ? error.message : String(error);
    console.log(JSON.stringify({ s, e: now(), ok: false, error: message }));
  } finally {
    clearTimeout(timer);
  }
}

for (;;) {
  attempt();
  await new Promise((r) => setTimeout(r, Number(every)));
}
