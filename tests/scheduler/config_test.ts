import assert from "node:assert/strict";
import { loadConfig } from "../../lib/config/load.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";
import { DEFAULT_MAX_PER_CLIENT, type SchedulerSection } from "../../lib/scheduler/config.ts";

const load = (text: string) =>
  loadConfig(text, { file: "edge.yaml", roles: builtinRoles() }).sections.scheduler as SchedulerSection;

Deno.test("scheduler config limits every service's connections per client address by default, and 0 lifts it", () => {
  const cfg = load(`roles: [scheduler]
scheduler:
  services:
    - name: web
      listen: 127.0.0.1:8081
      servers: [{ address: 127.0.0.1:9001 }]
    - name: open
      listen: 127.0.0.1:8082
      servers: [{ address: 127.0.0.1:9001 }]
      max_per_client: 0
`);
  assert.ok(DEFAULT_MAX_PER_CLIENT > 0 && DEFAULT_MAX_PER_CLIENT < cfg.services[0].max_connections);
  assert.equal(
    cfg.services[0].max_per_client,
    DEFAULT_MAX_PER_CLIENT,
    "a service that says nothing is limited",
  );
  assert.equal(cfg.services[1].max_per_client, 0, "0: no limit, when asked");
  assert.equal(
    cfg.rules_service.max_per_client,
    DEFAULT_MAX_PER_CLIENT,
    "services from an agent-rules file too",
  );
});
