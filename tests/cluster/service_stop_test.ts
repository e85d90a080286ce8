/**
 * A node role with a cluster section gives back what it published when it stops: a reload that removes the node role
 * and later adds it again (on the same metrics registry, as the appliance keeps one) starts it afresh.
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { defineNodeRole, nodeRole } from "../../lib/node/role.ts";
import { freeUdpPort } from "../_support/ports.ts";
import { testClusterSection } from "./_in_process.ts";

Deno.test("a node role with a cluster section removes its cluster series when it stops, and starts again on the same registry", async () => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const metrics = new MetricsRegistry();
  const logger = new Logger({ level: "error", clock, sink: () => {} });
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_cluster_stop_" });
  const defaults = nodeRole.section.default as Record<string, unknown>;
  const config = {
    ...defaults,
    bind: "127.0.0.1",
    data_dir: dataDir,
    cluster: testClusterSection("a", { host: "127.0.0.1", port: freeUdpPort() }, [
      { name: "b", api: { host: "127.0.0.1", port: 1 }, data: { host: "127.0.0.1", port: freeUdpPort() } },
    ]),
  };
  const fetch = () => Promise.reject(new TypeError("connection refused"));
  try {
    for (let round = 0; round < 2; round++) {
      const role = await defineNodeRole({ fetch }).start(config as never, {
        nodeName: "a",
        logger,
        metrics,
        clock,
      });
      assert.match(metrics.render(), /edgenode_cluster_/, `round ${round}: published`);
      await role.stop(new AbortController().signal);
      assert.doesNotMatch(metrics.render(), /edgenode_cluster_/, `round ${round}: removed`);
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
