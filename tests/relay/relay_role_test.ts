import assert from "node:assert/strict";
import { loadConfig } from "../../lib/config/load.ts";
import { ErrorList } from "../../lib/core/errors.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";

const roles = builtinRoles();
function errorsOf(text: string): string[] {
  try {
    loadConfig(text, { file: "r.yaml", roles });
  } catch (error) {
    assert.ok(error instanceof ErrorList);
    return error.errors.map((e) => e.format());
  }
  assert.fail("accepted");
}

Deno.test("relay section reads relays with their targets and UDP settings", () => {
  const plan = loadConfig(
    `
relay:
  udp: portable
  batch: 32
  socket_buffer: 8MiB
  relays:
    - name: video
      listen: 0.0.0.0:5004
      targets: [127.0.0.1:6004, "[::1]:6004"]
`,
    { file: "r.yaml", roles },
  );
  assert.deepEqual(plan.sections.relay, {
    udp: "portable",
    batch: 32,
    max_datagram: 65535,
    socket_buffer: 8 * 1024 * 1024,
    relays: [{
      name: "video",
      listen: { host: "0.0.0.0", port: 5004 },
      targets: [{ host: "127.0.0.1", port: 6004 }, { host: "::1", port: 6004 }],
    }],
  });
});

Deno.test("relay section reports its mistakes at their line and column", () => {
  const text = [
    "relay:", //                                     1
    "  udp: turbo", //                               2
    "  relays:", //                                  3
    "    - name: a", //                              4
    "      listen: localhost:5004", //               5
    "      targets: [127.0.0.1:1, 127.0.0.1:1]", //  6
    "    - name: a", //                              7
    "      listen: 0.0.0.0:5006", //                 8
    "      targets: []", //                          9
    "    - name: b", //                              10
    "      targets: [127.0.0.1:2]", //               11
  ].join("\n");
  assert.deepEqual(errorsOf(text), [
    `r.yaml:2:8: relay.udp: Expected one of auto, fast, portable, got "turbo"`,
    `r.yaml:5:15: relay.relays[0].listen: Expected an IP address, not the host name "localhost"`,
    `r.yaml:6:30: relay.relays[0].targets[1]: Repeated target "127.0.0.1:1" (first at line 6, column 17)`,
    `r.yaml:9:16: relay.relays[1].targets: Expected at least 1 item, got 0`,
    `r.yaml:10:7: relay.relays[2].listen: Missing required key "listen" (IP:PORT such as 0.0.0.0:5004 or [::1]:5004)`,
  ]);
});

Deno.test("relay section points a repeated relay name at both relays", () => {
  const text = "relay:\n  relays:\n    - {name: a, listen: 0.0.0.0:1, targets: [127.0.0.1:2]}\n" +
    "    - {name: a, listen: 0.0.0.0:3, targets: [127.0.0.1:4]}\n";
  assert.deepEqual(errorsOf(text), [
    `r.yaml:4:7: relay.relays[1]: Repeated relay name "a" (first at line 3, column 7)`,
  ]);
});
