import assert from "node:assert/strict";
import { ErrorList } from "../../lib/core/errors.ts";
import { DEFAULT_BUDGETS, type NodeContext, type SessionBudgets } from "../../lib/graph/budgets.ts";
import { defineElement, type ElementKind } from "../../lib/graph/element.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { checkProgram } from "../../lib/graph/program.ts";

const kinds = coreElements();
const lines = (...ls: string[]) => ls.join("\n") + "\n";

function nodeWith(budgets: Partial<SessionBudgets>, rest: Omit<NodeContext, "budgets"> = {}): NodeContext {
  return { budgets: { ...DEFAULT_BUDGETS, ...budgets }, ...rest };
}

/** The errors as `t.dipronn:line:col: message` lines. */
function refusal(text: string, node: NodeContext, portsInUse?: ReadonlyMap<number, string>): string[] {
  try {
    checkProgram(text, { file: "t.dipronn", kinds, node, portsInUse });
  } catch (error) {
    assert.ok(error instanceof ErrorList, `expected an ErrorList, got ${error}`);
    return error.errors.map((e) => e.format());
  }
  assert.fail("expected the program to be refused");
}

/** `depth` duplicators in a row, each with `fan` outputs into the next; the last sends to `fan` addresses. */
function duplicatorTree(depth: number, fan: number): string {
  const out = ["Project fan;"];
  out.push(`{ AP name="D0" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(7000));`);
  for (let d = 0; d < depth; d++) {
    if (d > 0) out.push(`{ AP name="D${d}" ref=localservice.duplicator; inputs = in;`);
    const targets = Array.from(
      { length: fan },
      (_, k) => d === depth - 1 ? `o${k}(DIPRONN_OUTPUT("192.0.2.${k + 1}:5004"))` : `o${k}(D${d + 1}.in)`,
    );
    out.push(`  outputs = ${targets.join(", ")}; }`);
  }
  return lines(...out);
}

Deno.test("checkProgram refuses a duplicator tree over the sends budget, naming the input and the excess", () => {
  // 1 + 4 + 16 + 64 deliveries and sends: 85 per datagram into D0.in.
  const text = duplicatorTree(3, 4);
  checkProgram(text, { file: "t.dipronn", kinds, node: nodeWith({ maxSendsPerDatagram: 85 }) });
  assert.deepEqual(refusal(text, nodeWith({ maxSendsPerDatagram: 80 })), [
    "t.dipronn:2:57: Budget sends per datagram: a datagram into D0.in (DIPRONN_INPUT(7000)) leads to 85 sends " +
    "(deliveries to APs and DIPRONN_OUTPUT datagrams), 5 over the node's 80 (node.max_sends_per_datagram); " +
    "duplicators multiply",
  ]);
});

Deno.test("checkProgram counts an exponential fan-out quickly and reports it", () => {
  // 64 duplicators with two outputs each into the next: 2^64 paths, counted once per AP.
  const out = ["Project deep;"];
  for (let d = 0; d < 64; d++) {
    const input = d === 0 ? "in(DIPRONN_INPUT(7000))" : "in";
    const next = d === 63 ? `a(DIPRONN_OUTPUT("192.0.2.1:5004"))` : `a(D${d + 1}.in), b(D${d + 1}.in)`;
    out.push(`{ AP name="D${d}" ref=localservice.duplicator; inputs = ${input}; outputs = ${next}; }`);
  }
  const started = performance.now();
  const [message] = refusal(lines(...out), nodeWith({}));
  assert.ok(performance.now() - started < 2000);
  assert.match(message, /^t\.dipronn:2:\d+: Budget sends per datagram: .* leads to 2\.77e\+19 sends/);
});

Deno.test("checkProgram keeps one wire of an output wired twice to the same target", () => {
  const text = lines(
    "Project twice;",
    `{ AP name="D" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(7000));`,
    `  outputs = a(DIPRONN_OUTPUT("192.0.2.1:5004"), DIPRONN_OUTPUT("192.0.2.1:5004"), C.in, C.in); }`,
    `{ AP name="C" ref=localservice.counter; inputs = in; }`,
  );
  const plan = checkProgram(text, { file: "t.dipronn", kinds, node: nodeWith({ maxSendsPerDatagram: 3 }) });
  assert.equal(plan.aps[0].outputs[0].wires.length, 2);
});

Deno.test("checkProgram refuses more sockets than a session may hold, at the input that goes over", () => {
  const inputs = Array.from({ length: 3 }, (_, k) => `i${k}(DIPRONN_INPUT(${7000 + 2 * k}))`).join(", ");
  const text = lines(
    "Project socks;",
    "use_RTP;",
    `{ AP name="F" ref=localservice.forwarder; inputs = ${inputs};`,
    `  outputs = o(DIPRONN_OUTPUT("192.0.2.1:5004")); }`,
  );
  // Six bound ports (use_RTP) and one sending socket.
  assert.equal(checkProgram(text, { file: "t.dipronn", kinds }).usage.sockets, 7);
  assert.deepEqual(refusal(text, nodeWith({ maxSocketsPerSession: 4 })), [
    "t.dipronn:3:105: Budget sockets per session: the session needs 7 UDP sockets, 3 over the node's 4 " +
    "(node.max_sockets_per_session)",
  ]);
});

Deno.test("checkProgram counts the sockets running sessions hold against the node's", () => {
  const text = lines(
    "Project socks;",
    `{ AP name="C" ref=localservice.counter; inputs = in(DIPRONN_INPUT(7000)); }`,
  );
  const inUse = { sockets: 10, vms: 0, saverBytes: 0 };
  checkProgram(text, { file: "t.dipronn", kinds, node: nodeWith({ maxSockets: 11 }, { inUse }) });
  assert.deepEqual(refusal(text, nodeWith({ maxSockets: 10 }, { inUse })), [
    "t.dipronn:2:53: Budget sockets per node: the session needs 1 UDP sockets and running sessions hold 10, " +
    "1 over the node's 10 (node.max_sockets)",
  ]);
});

Deno.test("checkProgram refuses VM groups over the session's and the node's budgets, at the group", () => {
  const text = lines(
    "Project vms;",
    `{ AP name="D" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(7000)); outputs = a(C1.in), b(C2.in); }`,
    `{ VM name="V1" ref=img; { AP name="C1" ref=localservice.counter; inputs = in; } }`,
    `{ VM name="V2" ref=img; { AP name="C2" ref=localservice.counter; inputs = in; } }`,
  );
  assert.deepEqual(refusal(text, nodeWith({ maxVmsPerSession: 1 })), [
    "t.dipronn:4:1: Budget VM groups per session: the session has 2, 1 over the node's 1 (node.max_vms_per_session)",
  ]);
  assert.deepEqual(refusal(text, nodeWith({ maxVms: 4 }, { inUse: { sockets: 0, vms: 3, saverBytes: 0 } })), [
    "t.dipronn:4:1: Budget VM groups per node: the session has 2 and running sessions hold 3, 1 over the node's 4 " +
    "(node.max_vms)",
  ]);
});

Deno.test("checkProgram refuses DIPRONN_OUTPUT to the node itself unless the node allows it", () => {
  const to = (addr: string) =>
    lines(
      "Project loop;",
      `{ AP name="F" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(7000));`,
      `  outputs = o(DIPRONN_OUTPUT("${addr}")); }`,
    );
  const node = nodeWith({}, { host: "0.0.0.0" });
  for (const addr of ["127.0.0.1:5004", "127.8.0.1:5004", "[::1]:5004", "0.0.0.0:5004"]) {
    const [message] = refusal(to(addr), node);
    assert.match(
      message,
      /^t\.dipronn:3:15: DIPRONN_OUTPUT\(".*"\) from F goes to the node itself \(a loopback/,
    );
    assert.match(message, /unless node\.allow_loopback_output is true$/);
    checkProgram(to(addr), { file: "t.dipronn", kinds, node: nodeWith({ allowLoopbackOutput: true }) });
  }
  assert.match(
    refusal(to("192.0.2.9:5004"), nodeWith({}, { host: "192.0.2.9" }))[0],
    /goes to the node itself \(its bind address\)/,
  );
  // The node binds every address: a port one of its sessions holds may be the node itself.
  assert.match(
    refusal(to("192.0.2.9:7000"), node)[0],
    /may go to a UDP port of this node's own sessions/,
  );
  assert.match(
    refusal(to("192.0.2.9:6000"), node, new Map([[6000, "session other"]]))[0],
    /may go to a UDP port of this node's own sessions/,
  );
  checkProgram(to("192.0.2.9:5004"), { file: "t.dipronn", kinds, node });
});

Deno.test("checkProgram refuses savers beyond the node's quota, at the saver that goes over", () => {
  const text = lines(
    "Project rec;",
    `{ AP name="D" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(7000)); outputs = a(S1.in), b(S2.in); }`,
    `{ AP name="S1" ref=localservice.saver; inputs = in; output_file = "a.pcap"; max_bytes = 1048576; }`,
    `{ AP name="S2" ref=localservice.saver; inputs = in; output_file = "b.pcap"; max_bytes = 1048576; }`,
  );
  assert.equal(checkProgram(text, { file: "t.dipronn", kinds }).usage.saverBytes, 2 * 1024 * 1024);
  const inUse = { sockets: 0, vms: 0, saverBytes: 512 * 1024 };
  assert.deepEqual(refusal(text, nodeWith({ saverQuotaBytes: 2 * 1024 * 1024 }, { inUse })), [
    "t.dipronn:4:1: Budget saver bytes per node: the session's savers may write 2 MiB (their max_bytes) and " +
    "running sessions' 512 KiB, 512 KiB over the node's 2 MiB (node.saver_quota); lower max_bytes",
  ]);
});

Deno.test("checkProgram counts the sockets a kind declares it opens itself", () => {
  const kinds = coreElements();
  const own = defineElement({
    name: "test.own_sockets",
    description: "opens two sockets of its own",
    ports: { inputs: { min: 1, max: 1 }, outputs: { min: 0, max: 0 } },
    params: {},
    sockets: () => 2,
    create: () => ({ push() {} }),
  });
  kinds.register(own as ElementKind);
  const text = lines(
    "Project own;",
    `{ AP name="O" ref=test.own_sockets; inputs = in(DIPRONN_INPUT(7000)); }`,
  );
  assert.equal(checkProgram(text, { file: "t.dipronn", kinds }).usage.sockets, 3);
});
