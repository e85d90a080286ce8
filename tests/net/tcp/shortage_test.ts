/**
 * Both transports tell a failure for want of this host's own descriptors (EMFILE) as a LocalShortage, on connect and
 * on accept, so that a scheduler blames no server for it. Each runs in a child process with a low descriptor limit.
 */
import assert from "node:assert/strict";
import { poll } from "../../_support/until.ts";

for (const kind of ["fast", "portable"] as const) {
  Deno.test(`${kind} transport tells connects and accepts that fail for want of descriptors as a LocalShortage`, async () => {
    const child = new Deno.Command("sh", {
      args: [
        "-c",
        `ulimit -n 48 && exec "$0" run --no-prompt --allow-net --allow-read --allow-run --allow-ffi --unstable-net "$1" ${kind}`,
        Deno.execPath(),
        new URL("./_shortage_child.ts", import.meta.url).pathname,
      ],
      // Deno panics when the update check or its own signal handling, made lazily, finds no descriptor.
      env: { DENO_NO_UPDATE_CHECK: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const lines: string[] = [];
    const reading = (async () => {
      for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
        lines.push(...chunk.split("\n"));
      }
    })();
    const clients: Deno.TcpConn[] = [];
    try {
      const full = await poll(
        "the child to use up its descriptors",
        () => lines.find((l) => l.startsWith("full ")),
      );
      clients.push(await Deno.connect({ hostname: "127.0.0.1", port: Number(full.split(" ")[1]) }));
      const status = await child.status;
      await reading;
      assert.equal(status.code, 0, new TextDecoder().decode((await child.stderr.getReader().read()).value));
      const reports = lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
      for (const what of ["connect", "accept"]) {
        const r = reports.find((x) => x.what === what);
        assert.ok(r, `a ${what} report in ${JSON.stringify(reports)}`);
        assert.equal(r.name, "LocalShortage", `${what}: ${r.message}`);
        assert.equal(r.code, "EMFILE", what);
        assert.match(r.message, /^Cannot (connect to|accept on) .*: too many open files/i, what);
      }
    } finally {
      for (const c of clients) c.close();
      try {
        child.kill();
      } catch { /* ended */ }
      await child.status;
      await reading.catch(() => {});
      await child.stderr.cancel().catch(() => {});
    }
  });
}
