/** Stand-ins for a service and its servers, as lib/scheduler/share.ts sees them (SharedService, SharedServer). */
import type { AdminState } from "../../lib/scheduler/config.ts";
import type { PersistenceTable } from "../../lib/scheduler/persistence.ts";
import type { SharedServer, SharedService } from "../../lib/scheduler/share.ts";

export class FakeServer implements SharedServer {
  admin: AdminState;
  configuredWeight: number;
  constructor(readonly key: string, readonly spec: { state: AdminState; weight: number }) {
    this.admin = spec.state;
    this.configuredWeight = spec.weight;
  }
  setAdmin(state: AdminState): void {
    this.admin = state;
  }
}

export class FakeService implements SharedService {
  changes = 0;
  constructor(
    readonly name: string,
    readonly servers: FakeServer[],
    readonly persistence: PersistenceTable | null,
  ) {}
  changed(): void {
    this.changes++;
  }
}
