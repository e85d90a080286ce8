/**
 * The soak test's client side, run as its own process so that its ten thousand sockets count against neither the
 * test nor the scheduler. It holds connections open through a scheduler to echo backends that greet with their name
 * line (tests/_support/backends.ts), and checks every byte that comes back.
 *
 * Commands, one per stdin line; each is answered with one JSON line on stdout:
 *   open N PORT SIZE   open N more connections to 127.0.0.1:PORT, read each greeting, send SIZE bytes, check the echo
 *   again SIZE         on every open connection, send SIZE more bytes and check the echo; failed ones are closed
 *   close              close every connection
 * A connection that ends or fails counts as failed (by the server that greeted it); bytes that come back different
 * count as a mismatch, which no failure of a server excuses.
 */
const LOOPBACK = "127.0.0.1";
/** Connects in flight at once while opening. */
const WAVE = 400;
/** Longest wait for one connection's greeting or echo. */
const STEP_TIMEOUT_MS = 30_000;

interface Held {
  readonly id: number;
  readonly conn: Deno.TcpConn;
  readonly server: string;
  /** Bytes sent so far: the pattern goes on from here. */
  sent: number;
}

interface Tally {
  verified: number;
  failed: number;
  mismatched: number;
  bytes: number;
  byServer: Record<string, { verified: number; failed: number }>;
}

class Mismatch extends Error {}

/** The byte at position `at` of connection `id`'s stream: differs between connections and along each one. */
function patternByte(id: number, at: number): number {
  return (id * 131 + at * 7 + (at >>> 8)) & 0xff;
}

function tally(): Tally {
  return { verified: 0, failed: 0, mismatched: 0, bytes: 0, byServer: {} };
}

function count(t: Tally, server: string, ok: boolean): void {
  const s = t.byServer[server] ??= { verified: 0, failed: 0 };
  if (ok) s.verified++;
  else s.failed++;
  if (ok) t.verified++;
  else t.failed++;
}

async function readExactly(conn: Deno.TcpConn, n: number, buf: Uint8Array): Promise<Uint8Array | null> {
  const out = new Uint8Array(n);
  let have = 0;
  while (have < n) {
    const got = await conn.read(buf.subarray(0, Math.min(buf.length, n - have)));
    if (got === null) return null;
    out.set(buf.subarray(0, got), have);
    have += got;
  }
  return out;
}

async function bounded<T>(work: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`No answer within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Sends `size` more pattern bytes and checks they come back; throws Mismatch on a wrong byte. */
async function exchange(h: Held, size: number, buf: Uint8Array): Promise<void> {
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i++) data[i] = patternByte(h.id, h.sent + i);
  const writing = (async () => {
    let off = 0;
    while (off < size) off += await h.conn.write(data.subarray(off));
  })();
  const back = await readExactly(h.conn, size, buf);
  await writing;
  if (back === null) throw new Error("ended");
  for (let i = 0; i < size; i++) {
    if (back[i] !== data[i]) throw new Mismatch(`connection ${h.id}: byte ${h.sent + i} differs`);
  }
  h.sent += size;
}

const held = new Map<number, Held>();
let nextId = 0;

/** One exchange of `size` bytes on a held connection, counted in `t`; a failed one drops the connection. */
async function verified(t: Tally, h: Held, size: number, buf: Uint8Array): Promise<void> {
  try {
    await bounded(exchange(h, size, buf));
    t.bytes += size;
    count(t, h.server, true);
  } catch (error) {
    if (error instanceof Mismatch) t.mismatched++;
    drop(h);
    count(t, h.server, false);
  }
}

function drop(h: Held): void {
  held.delete(h.id);
  try {
    h.conn.close();
  } catch {
    // Closed already.
  }
}

async function open(n: number, port: number, size: number): Promise<Tally> {
  const t = tally();
  let started = 0;
  const one = async () => {
    const buf = new Uint8Array(16 * 1024);
    while (started < n) {
      started++;
      const id = nextId++;
      let conn: Deno.TcpConn;
      try {
        conn = await Deno.connect({ hostname: LOOPBACK, port });
      } catch {
        count(t, "(connect)", false);
        continue;
      }
      const greeting = await bounded(readLine(conn, buf)).catch(() => null);
      if (greeting === null) {
        conn.close();
        count(t, "(no greeting)", false);
        continue;
      }
      const h: Held = { id, conn, server: greeting, sent: 0 };
      held.set(id, h);
      await verified(t, h, size, buf);
    }
  };
  await Promise.all(Array.from({ length: Math.min(WAVE, n) }, one));
  return t;
}

/** The greeting: the server's name and a newline, read byte by byte so that no echo is taken with it. */
async function readLine(conn: Deno.TcpConn, buf: Uint8Array): Promise<string | null> {
  let line = "";
  for (;;) {
    const got = await conn.read(buf.subarray(0, 1));
    if (got === null) return null;
    if (buf[0] === 0x0a) return line;
    line += String.fromCharCode(buf[0]);
    if (line.length > 64) return null;
  }
}

async function again(size: number): Promise<Tally> {
  const t = tally();
  const all = [...held.values()];
  let next = 0;
  const one = async () => {
    const buf = new Uint8Array(16 * 1024);
    while (next < all.length) {
      await verified(t, all[next++], size, buf);
    }
  };
  await Promise.all(Array.from({ length: Math.min(WAVE, all.length) }, one));
  return t;
}

const encoder = new TextEncoder();
const reply = (value: unknown) => Deno.stdout.writeSync(encoder.encode(JSON.stringify(value) + "\n"));

let pending = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  pending += chunk;
  let newline;
  while ((newline = pending.indexOf("\n")) >= 0) {
    const [command, ...args] = pending.slice(0, newline).trim().split(/\s+/);
    pending = pending.slice(newline + 1);
    const numbers = args.map(Number);
    if (command === "open") reply({ ...(await open(numbers[0], numbers[1], numbers[2])), held: held.size });
    else if (command === "again") reply({ ...(await again(numbers[0])), held: held.size });
    else if (command === "close") {
      const closed = held.size;
      for (const h of [...held.values()]) drop(h);
      reply({ closed });
    } else reply({ error: `unknown command ${command}` });
  }
}
