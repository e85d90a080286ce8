/**
 * A cluster member as the coordinator talks to it: this node (direct calls into its part host and usage sampler)
 * or a peer (signed calls to its /cluster/* routes). One interface, so the coordinator's tests use fakes.
 */
import type { HostPort } from "../net/address.ts";
import type { PartHost, PartRequest } from "./parts.ts";
import { PartRefused } from "./parts.ts";
import { type PeerClient, PeerError } from "./peers.ts";
import { type NodeUsage, parseUsage } from "./usage.ts";

export type UndoResult = "released" | "stopped" | "none";

export interface Member {
  readonly name: string;
  usage(timeoutMs: number): Promise<NodeUsage>;
  /** Throws PartRefused when the node will not take its part; other errors: it could not be asked. */
  prepare(session: string, req: PartRequest, timeoutMs: number): Promise<void>;
  commit(session: string, attempt: string, timeoutMs: number): Promise<void>;
  /** Releases a prepared part or stops a running one of `attempt` (any attempt when absent). */
  abort(session: string, attempt: string | undefined, timeoutMs: number): Promise<UndoResult>;
  heartbeat(timeoutMs: number): Promise<void>;
}

/** This node as a member. */
export class LocalMember implements Member {
  constructor(
    readonly name: string,
    private readonly parts: PartHost,
    private readonly usageOf: () => NodeUsage,
  ) {}

  usage(): Promise<NodeUsage> {
    return Promise.resolve(this.usageOf());
  }

  async prepare(session: string, req: PartRequest): Promise<void> {
    await this.parts.prepare(session, req);
  }

  commit(session: string, attempt: string): Promise<void> {
    return this.parts.commit(session, attempt);
  }

  abort(session: string, attempt: string | undefined): Promise<UndoResult> {
    return this.parts.abort(session, attempt);
  }

  heartbeat(): Promise<void> {
    return Promise.resolve();
  }
}

/** A peer reached through its status API. */
export class RemoteMember implements Member {
  constructor(
    private readonly peer: { readonly name: string; readonly api: HostPort },
    private readonly client: PeerClient,
  ) {}

  get name(): string {
    return this.peer.name;
  }

  async usage(timeoutMs: number): Promise<NodeUsage> {
    const answer = await this.client.call(this.peer, "GET", "/cluster/usage", { timeoutMs });
    if (answer.status !== 200) {
      throw new Error(`usage: HTTP ${answer.status} ${String(answer.body.error ?? "")}`);
    }
    const usage = parseUsage(answer.body, this.peer.name);
    if (typeof usage === "string") throw new Error(usage);
    return usage;
  }

  async prepare(session: string, req: PartRequest, timeoutMs: number): Promise<void> {
    await this.#post(`/cluster/sessions/${encodeURIComponent(session)}/prepare`, req, timeoutMs);
  }

  async commit(session: string, attempt: string, timeoutMs: number): Promise<void> {
    await this.#post(`/cluster/sessions/${encodeURIComponent(session)}/commit`, { attempt }, timeoutMs);
  }

  async abort(session: string, attempt: string | undefined, timeoutMs: number): Promise<UndoResult> {
    const path = `/cluster/sessions/${encodeURIComponent(session)}/${
      attempt === undefined ? "stop" : "abort"
    }`;
    const body = await this.#post(path, attempt === undefined ? {} : { attempt }, timeoutMs);
    const undone = body.undone;
    return undone === "released" || undone === "stopped" ? undone : "none";
  }

  async heartbeat(timeoutMs: number): Promise<void> {
    await this.#post("/cluster/heartbeat", {}, timeoutMs);
  }

  async #post(path: string, body: unknown, timeoutMs: number): Promise<Record<string, unknown>> {
    let answer;
    try {
      answer = await this.client.call(this.peer, "POST", path, { body, timeoutMs });
    } catch (error) {
      // A body over the member's status.max_body (a prepare with large modules) is its refusal, not a lost node.
      if (error instanceof PeerError && error.kind === "too_large") {
        throw new PartRefused(this.peer.name, error.detail);
      }
      throw error;
    }
    if (answer.status === 200) return answer.body;
    const reason = typeof answer.body.error === "string" ? answer.body.error : `HTTP ${answer.status}`;
    if (answer.status === 409 || answer.status === 400 || answer.status === 404) {
      throw new PartRefused(this.peer.name, reason, answer.body.errors);
    }
    throw new Error(`${path}: HTTP ${answer.status}: ${reason}`);
  }
}
