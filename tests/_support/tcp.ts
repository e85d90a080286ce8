/** Connects to 127.0.0.1:`port` and returns all it is sent until it closes (an agent's reply, say). */
export async function readToEnd(port: number): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const buf = new Uint8Array(2048);
  const decoder = new TextDecoder();
  let text = "";
  try {
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += decoder.decode(buf.subarray(0, n), { stream: true });
    }
  } finally {
    conn.close();
  }
  return text + decoder.decode();
}
