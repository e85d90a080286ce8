/** The status API around one running role, for testing its routes through `app.request()` (no sockets). */
import type { Hono } from "hono";
import { createApp } from "../../lib/api/app.ts";
import type { Clock } from "../../lib/core/clock.ts";
import type { Logger } from "../../lib/core/logger.ts";
import type { MetricsRegistry } from "../../lib/core/metrics.ts";
import type { RunningRole } from "../../lib/roles/role.ts";

export function roleApp(
  role: string,
  running: RunningRole,
  deps: {
    clock: Clock;
    metrics: MetricsRegistry;
    logger: Logger;
    token: string;
    /** status.max_body (its default, 1 MiB, when absent). */
    maxBody?: number;
  },
): Hono {
  return createApp({
    name: "n",
    version: "test",
    clock: deps.clock,
    startedAt: deps.clock.now(),
    metrics: deps.metrics,
    roles: () => ({ [role]: running.status() }),
    token: deps.token,
    maxBody: deps.maxBody ?? 1024 * 1024,
    logger: deps.logger,
    mount: [running.routes!],
    selfGuarded: running.selfGuarded,
  });
}
