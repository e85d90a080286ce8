/**
 * The client side of /cluster/*: signed requests to a peer's status API and checked, signed answers. Each call has
 * a deadline on the injected clock; `fetch` is injected too, so tests route calls into `app.request()`.
 */
import type { Clock } from "../core/clock.ts";
import { deadline } from "../core/clock.ts";
import { formatHostPort, type HostPort } from "../net/address.ts";
import { ClusterAuthError, REPLY_HEADER, REQUEST_HEADER, signRequest, verifyReply } from "./auth.ts";

export type Fetch = (input: string, init: RequestInit) => Promise<Response>;

/** The largest answer a peer client reads by default: whatever answers on a peer's address may stream for ever. */
export const MAX_ANSWER = 4 * 1024 * 1024;

/**
 * A peer did not answer in time, could not be reached, or its answer was not signed by it; or (`too_large`) its
 * status API refused the request's body as over its status.max_body before the cluster's check could sign an answer.
 */
export class PeerError extends Error {
  override name = "PeerError";
  constructor(
    readonly peer: string,
    readonly kind: "timeout" | "unreachable" | "unauthenticated" | "bad_answer" | "too_large",
    readonly detail: string,
  ) {
    super(
      kind === "too_large"
        ? `Peer ${peer} refused the request: ${detail}`
        : `Cannot reach peer ${peer}: ${detail}`,
    );
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
  /**
   * Answers larger than this are refused (a member's answers are small): by their Content-Length before any is read,
   * else while they stream, the read cancelled once past it. Default MAX_ANSWER.
   */
  readonly maxAnswer?: number;
}

/** Signed calls to one cluster's peers. */
export class PeerClient {
  readonly #fetch: Fetch;
  readonly #maxAnswer: number;

  constructor(private readonly o: PeerClientOptions) {
    this.#fetch = o.fetch ?? ((input, init) => fetch(input, init));
    this.#maxAnswer = o.maxAnswer ?? MAX_ANSWER;
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
    const answer = await readCapped(response, this.#maxAnswer);
    if (answer === null) {
      throw new PeerError(
        peer.name,
        "bad_answer",
        `an answer of more than ${this.#maxAnswer} bytes to ${method} ${path}`,
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
      if (response.status === 413) {
        // The status API's body limit answers before the cluster's guard, so its refusal is never signed. Trusting
        // it changes only the words: the call fails either way.
        throw new PeerError(
          peer.name,
          "too_large",
          `${method} ${path}: its body of ${body.length} bytes is over ${peer.name}'s status.max_body (HTTP 413)`,
        );
      }
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

/**
 * The body of `response`, or null when it is larger than `max` bytes: refused by its Content-Length unread, else
 * read chunk by chunk and cancelled once past `max` (never buffers more than `max` plus one chunk). A body that
 * fails half-way reads as what arrived (the signature check then refuses it).
 */
async function readCapped(response: Response, max: number): Promise<Uint8Array | null> {
  const declared = Number(response.headers.get("content-length") ?? NaN);
  if (declared > max) {
    await response.body?.cancel().catch(() => {});
    return null;
  }
  if (!response.body) return new Uint8Array();
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.length;
      if (size > max) {
        await reader.cancel().catch(() => {});
        return null;
      }
      chunks.push(value);
    }
  } catch {
    // Cut off: what arrived is checked (and refused) as the answer.
  } finally {
    reader.releaseLock();
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
