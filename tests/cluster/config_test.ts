import assert from "node:assert/strict";
import { loadConfig } from "../../lib/config/load.ts";
import { ErrorList } from "../../lib/core/errors.ts";
import { StartError } from "../../lib/core/errors.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";
import { clusterSummary, clusterToken } from "../../lib/cluster/config.ts";
import type { ClusterSection } from "../../lib/cluster/config.ts";

const roles = builtinRoles();
const load = (text: string) => loadConfig(text, { file: "edge.yaml", roles, env: () => undefined });

function errorsOf(text: string): string[] {
  try {
    load(text);
  } catch (error) {
    assert.ok(error instanceof ErrorList, `expected ErrorList, got ${error}`);
    return error.errors.map((e) => e.format());
  }
  assert.fail(`config was accepted:\n${text}`);
}

const GOOD = `roles: [node]
node:
  cluster:
    name: brno
    token: "0123456789abcdef"
    data: 10.0.0.1:7400
    peers:
      - { name: prague, api: "10.0.0.2:8080", data: "10.0.0.2:7400" }
      - { name: liberec, api: "10.0.0.3:8080", data: "10.0.0.3:7400" }
    heartbeat: 500ms
    loss_timeout: 2s
`;

function clusterOf(text: string): ClusterSection {
  const plan = load(text);
  return (plan.sections.node as { cluster: ClusterSection }).cluster;
}

Deno.test("node.cluster is null without the section, so a single box needs nothing", () => {
  assert.equal((load("roles: [node]\n").sections.node as { cluster: unknown }).cluster, null);
});

Deno.test("node.cluster reads name, token, data, peers and timing", () => {
  const c = clusterOf(GOOD);
  assert.equal(c.name, "brno");
  assert.deepEqual(c.data, { host: "10.0.0.1", port: 7400 });
  assert.deepEqual(c.peers.map((p) => p.name), ["prague", "liberec"]);
  assert.deepEqual(c.peers[0].api, { host: "10.0.0.2", port: 8080 });
  assert.equal(c.heartbeat, 500);
  assert.equal(c.loss_timeout, 2000);
  assert.equal(c.prepare_timeout, 5000);
});

Deno.test("node.cluster refuses mistakes with file:line:col", () => {
  const errors = errorsOf(`roles: [node]
node:
  cluster:
    name: "bad name"
    token: "short"
    data: 10.0.0.1
    peers:
      - { name: prague, api: "10.0.0.2:8080", data: "10.0.0.2:7400" }
      - { name: prague, api: "10.0.0.3:8080", data: "10.0.0.3:7400", extra: 1 }
    heartbeat: 1s
`);
  const text = errors.join("\n");
  assert.match(text, /edge\.yaml:4:11: .*node\.cluster\.name/);
  assert.match(text, /edge\.yaml:5:12: .*node\.cluster\.token.*16\.\.4096 characters/);
  assert.match(text, /edge\.yaml:6:11: /);
  assert.match(text, /edge\.yaml:9:\d+: .*Unknown key "extra"/);
});

Deno.test("node.cluster refuses both token and token_file, or neither", () => {
  const both = errorsOf(
    GOOD.replace('token: "0123456789abcdef"', 'token: "0123456789abcdef"\n    token_file: /etc/t'),
  );
  assert.match(both.join("\n"), /edge\.yaml:5:\d+: node\.cluster\.token: Give token or token_file, not both/);
  const neither = errorsOf(GOOD.replace('    token: "0123456789abcdef"\n', ""));
  assert.match(neither.join("\n"), /Expected token or token_file/);
});

Deno.test("node.cluster refuses a repeated peer name, its own name as a peer, and a loss timeout under the heartbeat", () => {
  const text = errorsOf(GOOD.replace("name: liberec", "name: prague")).join("\n");
  assert.match(text, /edge\.yaml:9:\d+: .*Repeated peer name "prague" \(first at line 8/);
  const loss = errorsOf(GOOD.replace("loss_timeout: 2s", "loss_timeout: 400ms")).join("\n");
  assert.match(loss, /edge\.yaml:11:19: .*loss_timeout must be longer than heartbeat/);
  const self = errorsOf(GOOD.replace("name: liberec", "name: brno")).join("\n");
  assert.match(self, /edge\.yaml:9:\d+: .*A peer may not bear this node's name "brno"/);
});

Deno.test("clusterToken reads the token file and refuses a short token", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/t`, "abcdefghijklmnopqrst\n");
    const cfg = { ...clusterOf(GOOD), token: null, token_file: `${dir}/t` };
    assert.equal(await clusterToken(cfg), "abcdefghijklmnopqrst");
    await Deno.writeTextFile(`${dir}/t`, "short\n");
    await assert.rejects(() => clusterToken(cfg), StartError);
    await assert.rejects(
      () => clusterToken({ ...cfg, token_file: `${dir}/missing` }),
      /Cannot read the cluster token file/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("clusterSummary never shows the token", () => {
  const summary = JSON.stringify(clusterSummary(clusterOf(GOOD)));
  assert.ok(!summary.includes("0123456789abcdef"));
  assert.match(summary, /inline \(hidden\)/);
});

Deno.test("node.cluster.load_threshold is a number in 0.05..2", () => {
  assert.equal(clusterOf(GOOD).load_threshold, 0.85);
  assert.equal(clusterOf(GOOD + "    load_threshold: 0.5\n").load_threshold, 0.5);
  assert.match(
    errorsOf(GOOD + "    load_threshold: 3\n").join("\n"),
    /edge\.yaml:12:21: .*a number in 0\.05\.\.2, got 3/,
  );
});
