/**
 * The node's services as element and session tests use them: the given clock, a logger that keeps quiet, a registry
 * of their own, loopback, default UDP options. Override what a test needs (a data directory, shared objects).
 */
import type { Clock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import type { NodeServices } from "../../lib/graph/element.ts";

export function testNode(clock: Clock, overrides: Partial<NodeServices> = {}): NodeServices {
  return {
    clock,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    metrics: new MetricsRegistry(),
    dataDir: "/nonexistent",
    host: "127.0.0.1",
    udp: {},
    ...overrides,
  };
}
