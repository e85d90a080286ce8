/**
 * The client side of /cluster/*: signed requests to a peer's status API and checked, signed answers. Each call has
 * a deadline on the injected clock; `fetch` is injected too, so tests route calls into `app.request()`.
 */
import type { Clock } from "../core/clock.ts";
import { deadline } from "../core/clock.ts";
import { formatHostPort, type HostPort } from "../net/address.ts";
import { ClusterAuthError, REPLY_HEADER, REQUEST_HEADER, signRequest, verifyReply } from "./auth.ts";

export type Fetch = (input: string, init: RequestInit) => Promise<Response>;

/** A peer did not answer in time, could not be reached, or its answer was not signed by it. */
export class PeerError extends Error {
  override name = "PeerError";
  constructor(
    readonly peer: string,
    readonly kind: "timeout" | "unreachable" | "unauthenticated" | "bad_answer",
    detail: string,
  ) {
    super(`Cannot reach peer ${peer}: ${detail}`);
  }
}

export interface PeerAnswer {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

export interface PeerClientOptions {
  readonly self: string;
  readonly key: CryptoKey;
  readonly clock: Clock;
  readonly fetch?: Fetch;
  /** Answers larger than this are refused (a member's answers are small). */
  readonly maxAnswer?: number;
}

/** Signed calls to one cluster's peers. */
export class PeerClient {
  readonly #fetch: Fetch;
  readonly #maxAnswer: number;

  constructor(private readonly o: PeerClientOptions) {
    this.#fetch = o.fetch ?? ((input, init) => fetch(input, init));
    this.#maxAnswer = o.maxAnswer ?? 4 * 1024 * 1024;
  }

  /** POSTs (or GETs, without `body`) `path` on `peer` at `api`; any HTTP status is an answer, checked as a member's. */
  async call(
    peer: { name: string; api: HostPort },
    method: "GET" | "POST",
    path: string,
    o: { body?: unknown; timeoutMs: number },
  ): Promise<PeerAnswer> {
    const body = o.body === undefined ? new Uint8Array() : new TextEncoder().encode(JSON.stringify(o.body));
    const { header, sig } = await signRequest(this.o.key, {
      from: this.o.self,
      to: peer.name,
      method,
      path,
      body,
      now: this.o.clock.now(),
    });
    const limit = deadline(this.o.clock, o.timeoutMs);
    const timedOut = new Promise<never>((_, reject) =>
      limit.signal.addEventListener(
        "abort",
        () =>
          reject(
            new PeerError(peer.name, "timeout", `no answer to ${method} ${path} within ${o.timeoutMs} ms`),
          ),
        { once: true },
      )
    );
    timedOut.catch(() => {});
    try {
      return await Promise.race([
        timedOut,
        this.#exchange(peer, method, path, body, header, sig, limit.signal),
      ]);
    } finally {
      limit.cancel();
    }
  }

  async #exchange(
    peer: { name: string; api: HostPort },
    method: string,
    path: string,
    body: Uint8Array,
    header: string,
    sig: string,
    signal: AbortSignal,
  ): Promise<PeerAnswer> {
    let response: Response;
    try {
      response = await this.#fetch(`http://${formatHostPort(peer.api)}${path}`, {
        method,
        headers: {
          [REQUEST_HEADER]: header,
          ...(method === "POST" ? { "content-type": "application/json" } : {}),
        },
        body: method === "POST" ? body as BodyInit : undefined,
        signal,
      });
    } catch (error) {
      throw new PeerError(peer.name, "unreachable", `${method} ${path}: ${(error as Error).message}`);
    }
    const answer = new Uint8Array(await response.arrayBuffer().catch(() => new ArrayBuffer(0)));
    if (answer.length > this.#maxAnswer) {
      throw new PeerError(
        peer.name,
        "bad_answer",
        `an answer of ${answer.length} bytes to ${method} ${path}`,
      );
    }
    try {
      await verifyReply(this.o.key, response.headers.get(REPLY_HEADER), {
        self: this.o.self,
        peer: peer.name,
        status: response.status,
        requestSig: sig,
        body: answer,
      });
    } catch (error) {
      if (!(error instanceof ClusterAuthError)) throw error;
      throw new PeerError(peer.name, "unauthenticated", `${error.message} (HTTP ${response.status})`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(new TextDecoder().decode(answer));
    } catch {
      throw new PeerError(peer.name, "bad_answer", `${method} ${path}: the answer is not JSON`);
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      throw new PeerError(peer.name, "bad_answer", `${method} ${path}: the answer is not a JSON object`);
    }
    return { status: response.status, body: parsed as Record<string, unknown> };
  }
}
