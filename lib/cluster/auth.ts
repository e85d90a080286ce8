/**
 * Mutual authentication between cluster members over the status API. A request carries
 * `X-Edgenode-Cluster: v1 from=A to=B ts=MS nonce=HEX sig=HEX`, the signature an HMAC-SHA256 with the shared
 * cluster token over the version, both node names, the method, the path, the timestamp, the nonce and the body's
 * SHA-256. The answer carries `X-Edgenode-Cluster-Reply` signed the same way over its status, its body and the
 * request's signature, so a caller knows it reached a member and that the answer is to this very request. A request
 * older or newer than the clock skew window is refused, and one seen before within the window is refused as a
 * replay; signatures are compared in constant time (WebCrypto verify).
 */
import type { MiddlewareHandler } from "hono";
import type { Clock } from "../core/clock.ts";

export const REQUEST_HEADER = "x-edgenode-cluster";
export const REPLY_HEADER = "x-edgenode-cluster-reply";
/** Signatures remembered for replay detection; when full of unexpired ones, requests are refused (counted). */
export const MAX_REMEMBERED = 65_536;

const encoder = new TextEncoder();

/** Why a request or an answer was refused, as counted and told. */
export const REFUSALS = [
  "no_header",
  "malformed",
  "unknown_peer",
  "wrong_target",
  "stale",
  "bad_signature",
  "replayed",
  "replay_table_full",
] as const;
export type Refusal = typeof REFUSALS[number];

export class ClusterAuthError extends Error {
  override name = "ClusterAuthError";
  constructor(readonly reason: Refusal, detail = "") {
    super(`Cannot authenticate cluster ${detail || "message"}: ${reason.replaceAll("_", " ")}`);
  }
}

/** The HMAC key of a cluster token. */
export function clusterKey(token: string): Promise<CryptoKey> {
  return crypto.subtle.importKey("raw", encoder.encode(token), { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
    "verify",
  ]);
}

async function sha256Hex(body: Uint8Array): Promise<string> {
  return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", body as BufferSource)));
}

function hex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

function unhex(text: string): Uint8Array | null {
  if (!/^(?:[0-9a-f]{2})+$/.test(text)) return null;
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

async function hmac(key: CryptoKey, text: string): Promise<string> {
  return hex(new Uint8Array(await crypto.subtle.sign("HMAC", key, encoder.encode(text))));
}

function verifyHmac(key: CryptoKey, text: string, sig: string): Promise<boolean> {
  const bytes = unhex(sig);
  if (!bytes || bytes.length !== 32) return Promise.resolve(false);
  return crypto.subtle.verify("HMAC", key, bytes as BufferSource, encoder.encode(text));
}

interface Fields {
  from: string;
  to: string;
  ts: number;
  nonce: string;
  sig: string;
}

function parseHeader(value: string): Fields | null {
  const m =
    /^v1 from=(\S{1,64}) to=(\S{1,64}) ts=([0-9]{1,16})(?: nonce=([0-9a-f]{16,64}))? sig=([0-9a-f]{64})$/
      .exec(value.trim());
  if (!m) return null;
  return { from: m[1], to: m[2], ts: Number(m[3]), nonce: m[4] ?? "", sig: m[5] };
}

function requestText(f: Omit<Fields, "sig">, method: string, path: string, bodyHash: string): string {
  return ["edgenode-cluster-v1 request", f.from, f.to, method.toUpperCase(), path, f.ts, f.nonce, bodyHash]
    .join("\n");
}

function replyText(
  f: { from: string; to: string; ts: number },
  status: number,
  requestSig: string,
  bodyHash: string,
): string {
  return ["edgenode-cluster-v1 reply", f.from, f.to, status, requestSig, f.ts, bodyHash].join("\n");
}

/** The request header value, and its signature (the answer's proof refers to it). */
export async function signRequest(
  key: CryptoKey,
  o: { from: string; to: string; method: string; path: string; body: Uint8Array; now: number },
): Promise<{ header: string; sig: string }> {
  const nonce = hex(crypto.getRandomValues(new Uint8Array(12)));
  const f = { from: o.from, to: o.to, ts: Math.round(o.now), nonce };
  const sig = await hmac(key, requestText(f, o.method, o.path, await sha256Hex(o.body)));
  return { header: `v1 from=${f.from} to=${f.to} ts=${f.ts} nonce=${nonce} sig=${sig}`, sig };
}

/** Signatures seen within the freshness window: a request repeated inside it is a replay. */
export class ReplayTable {
  readonly #seen = new Map<string, number>();
  constructor(readonly max = MAX_REMEMBERED) {}

  /** Remembers `sig` until `expires`; false when it was seen already, "full" when there is no room. */
  remember(sig: string, expires: number, now: number): boolean | "full" {
    if (this.#seen.has(sig)) return false;
    if (this.#seen.size >= this.max) {
      for (const [s, at] of this.#seen) if (at < now) this.#seen.delete(s);
      if (this.#seen.size >= this.max) return "full";
    }
    this.#seen.set(sig, expires);
    return true;
  }

  get size(): number {
    return this.#seen.size;
  }
}

export interface VerifyOptions {
  readonly self: string;
  readonly peers: ReadonlySet<string>;
  readonly skewMs: number;
  readonly replays: ReplayTable;
  readonly now: number;
}

/** Checks a request's header against its method, path and body; returns the caller's name and signature. */
export async function verifyRequest(
  key: CryptoKey,
  header: string | undefined,
  req: { method: string; path: string; body: Uint8Array },
  o: VerifyOptions,
): Promise<{ from: string; sig: string }> {
  if (header === undefined) throw new ClusterAuthError("no_header", "request");
  const f = parseHeader(header);
  if (!f || !f.nonce) throw new ClusterAuthError("malformed", "request");
  if (!o.peers.has(f.from)) throw new ClusterAuthError("unknown_peer", "request");
  if (f.to !== o.self) throw new ClusterAuthError("wrong_target", "request");
  if (Math.abs(o.now - f.ts) > o.skewMs) throw new ClusterAuthError("stale", "request");
  if (!await verifyHmac(key, requestText(f, req.method, req.path, await sha256Hex(req.body)), f.sig)) {
    throw new ClusterAuthError("bad_signature", "request");
  }
  const fresh = o.replays.remember(f.sig, f.ts + o.skewMs, o.now);
  if (fresh === "full") throw new ClusterAuthError("replay_table_full", "request");
  if (!fresh) throw new ClusterAuthError("replayed", "request");
  return { from: f.from, sig: f.sig };
}

/** The answer's header value. */
export async function signReply(
  key: CryptoKey,
  o: { from: string; to: string; status: number; requestSig: string; body: Uint8Array; now: number },
): Promise<string> {
  const f = { from: o.from, to: o.to, ts: Math.round(o.now) };
  const sig = await hmac(key, replyText(f, o.status, o.requestSig, await sha256Hex(o.body)));
  return `v1 from=${f.from} to=${f.to} ts=${f.ts} sig=${sig}`;
}

/** Checks that an answer came from `peer` for the request signed `requestSig`. */
export async function verifyReply(
  key: CryptoKey,
  header: string | null,
  o: { self: string; peer: string; status: number; requestSig: string; body: Uint8Array },
): Promise<void> {
  if (header === null) throw new ClusterAuthError("no_header", `answer from ${o.peer}`);
  const f = parseHeader(header);
  if (!f) throw new ClusterAuthError("malformed", `answer from ${o.peer}`);
  if (f.from !== o.peer) throw new ClusterAuthError("unknown_peer", `answer from ${o.peer}`);
  if (f.to !== o.self) throw new ClusterAuthError("wrong_target", `answer from ${o.peer}`);
  if (!await verifyHmac(key, replyText(f, o.status, o.requestSig, await sha256Hex(o.body)), f.sig)) {
    throw new ClusterAuthError("bad_signature", `answer from ${o.peer}`);
  }
}

export interface ClusterAuthOptions {
  readonly key: CryptoKey;
  readonly self: string;
  readonly peers: ReadonlySet<string>;
  readonly skewMs: number;
  readonly clock: Clock;
  readonly replays?: ReplayTable;
  /** Counts a refusal by reason. */
  readonly refused: (reason: Refusal) => void;
}

/**
 * Hono middleware for /cluster/*: refuses with 401 what `verifyRequest` refuses, sets `clusterPeer` for the
 * handler, and signs every answer it lets through.
 */
export function clusterAuth(
  o: ClusterAuthOptions,
): MiddlewareHandler<{ Variables: { clusterPeer: string } }> {
  const replays = o.replays ?? new ReplayTable();
  return async function clusterAuthMiddleware(c, next) {
    // Peers only GET and POST: anything else is refused before its body is read.
    const method = c.req.method;
    if (method !== "GET" && method !== "POST") {
      o.refused("malformed");
      return c.json({ error: `${method} is not a cluster method` }, 405);
    }
    const body = method === "GET" ? new Uint8Array() : new Uint8Array(await c.req.arrayBuffer());
    let caller: { from: string; sig: string };
    try {
      caller = await verifyRequest(o.key, c.req.header(REQUEST_HEADER), {
        method: c.req.method,
        path: c.req.path,
        body,
      }, { self: o.self, peers: o.peers, skewMs: o.skewMs, replays, now: o.clock.now() });
    } catch (error) {
      if (!(error instanceof ClusterAuthError)) throw error;
      o.refused(error.reason);
      return c.json({ error: error.message }, 401);
    }
    c.set("clusterPeer", caller.from);
    await next();
    const answer = new Uint8Array(await c.res.clone().arrayBuffer());
    const header = await signReply(o.key, {
      from: o.self,
      to: caller.from,
      status: c.res.status,
      requestSig: caller.sig,
      body: answer,
      now: o.clock.now(),
    });
    c.res = new Response(answer, c.res);
    c.res.headers.set(REPLY_HEADER, header);
  };
}
