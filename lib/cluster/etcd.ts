/**
 * A small client of etcd's v3 JSON gateway (the grpc-gateway that etcd 3.4 serves on its client URL: POST
 * /v3/kv/range, /v3/kv/put, /v3/kv/deleterange, /v3/kv/txn, /v3/lease/grant|keepalive|revoke, /v3/watch), over plain
 * `fetch`. The npm etcd3 client needs grpc-js, reported to hang under Deno; the gateway needs nothing but HTTP.
 *
 * Keys and values are text here (UTF-8, base64 on the wire as the gateway wants). int64 fields come as JSON strings:
 * revisions are read as numbers (safe far beyond any revision a cluster reaches), lease ids stay strings (they use
 * all 64 bits).
 *
 * Several endpoints: a call that cannot connect to one tries the next, and the client starts later calls at the one
 * that last answered. Every call has a deadline on the injected clock; a watch has one for its start only.
 */

import { type Clock, deadline, systemClock } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";

/** A call that reached no endpoint within its deadline (every endpoint refused the connection, or none answered). */
export class EtcdUnreachableError extends Error {
  override name = "EtcdUnreachableError";
  constructor(readonly url: string, readonly detail: string) {
    super(`Cannot reach etcd at ${url}: ${detail}`);
  }
}

/** etcd answered and refused the request (a bad lease, a malformed request, no leader). */
export class EtcdRequestError extends Error {
  override name = "EtcdRequestError";
  constructor(
    readonly op: string,
    readonly key: string,
    readonly detail: string,
    /** The gRPC status code etcd gave (5 not found, 3 invalid argument, 14 unavailable, ...); 0 when none. */
    readonly code: number,
  ) {
    super(`etcd refused ${op} of ${key}: ${detail}`);
  }
}

/** A watch stream that could not start or broke off in a way that resuming cannot mend (compaction, bad data). */
export class EtcdWatchError extends Error {
  override name = "EtcdWatchError";
  constructor(readonly prefix: string, readonly detail: string) {
    super(`Cannot watch ${prefix} in etcd: ${detail}`);
  }
}

export interface KeyValue {
  readonly key: string;
  readonly value: string;
  readonly createRevision: number;
  readonly modRevision: number;
  readonly version: number;
  /** The lease the key is attached to; "0" for none. */
  readonly lease: string;
}

export interface WatchEvent {
  readonly type: "put" | "delete";
  readonly key: string;
  /** The new value ("" for a delete). */
  readonly value: string;
  readonly modRevision: number;
}

/** One condition of a transaction: `target` of `key` compared with `value` (revisions 0 mean "absent"). */
export interface Compare {
  readonly key: string;
  readonly target: "create" | "mod" | "version" | "value";
  readonly result?: "equal" | "not_equal" | "greater" | "less";
  readonly value: number | string;
}

export type TxnOp =
  | { readonly put: { readonly key: string; readonly value: string; readonly lease?: string } }
  | { readonly delete: { readonly key: string; readonly prefix?: boolean } }
  | { readonly get: { readonly key: string; readonly prefix?: boolean } };

export interface TxnResult {
  readonly succeeded: boolean;
  /** For each `get` op of the branch taken, in order, the keys it found. */
  readonly gets: readonly (readonly KeyValue[])[];
  readonly revision: number;
}

export interface EtcdOptions {
  /** Client URLs, e.g. ["http://10.0.0.9:2379"]; tried in order on connection failure. */
  readonly endpoints: readonly string[];
  readonly clock?: Clock;
  /** Deadline of each call (a watch's start), ms. Default 5000. */
  readonly timeoutMs?: number;
  /** A watch message may not exceed this many bytes (a bound on what the client buffers). Default 4 MiB. */
  readonly maxMessageBytes?: number;
  readonly fetch?: typeof fetch;
}

export interface WatchOptions {
  /** Watch from this revision on (events already past are replayed); default: from now. */
  readonly startRevision?: number;
  /** Called when the watch ends for good (closed: undefined; broken: the error). */
  readonly onEnd?: (error?: Error) => void;
}

export interface Watch {
  /** Resolves once the watch runs (etcd confirmed it); rejects if it could not start. */
  readonly ready: Promise<void>;
  close(): void;
}

const DEFAULT_TIMEOUT_MS = 5_000;
const DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024;
/** After a watch stream breaks, wait this long before resuming it on the next endpoint. */
const WATCH_RETRY_MS = 250;
/** gRPC "unavailable": this member cannot serve (no leader, stopping); another member may. */
/**
 * gRPC codes the gateway reports in-band when a member goes away under a watch: UNAVAILABLE, and CANCELLED ("the
 * client connection is closing", the gateway's own connection to its member, seen about one shutdown in six) or
 * DEADLINE_EXCEEDED on the way down. The watch resumes on them; any other error ends it.
 */
const RESUMABLE_GRPC_CODES: ReadonlySet<number> = new Set([1, 4, 14]);
/** A member that cannot serve a call: the call tries the next endpoint. */
const UNAVAILABLE = 14;

export class EtcdClient {
  readonly endpoints: readonly string[];
  readonly #clock: Clock;
  readonly #timeoutMs: number;
  readonly #maxMessage: number;
  readonly #fetch: typeof fetch;
  /** Index of the endpoint that answered last; calls start there. */
  #current = 0;
  readonly counts = { requests: 0, failovers: 0, refused: 0, unreachable: 0, watch_resumes: 0 };

  constructor(o: EtcdOptions) {
    if (o.endpoints.length === 0) throw new Error("Cannot use etcd: no endpoint given");
    this.endpoints = o.endpoints.map((e) => e.replace(/\/+$/, ""));
    this.#clock = o.clock ?? systemClock;
    this.#timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#maxMessage = o.maxMessageBytes ?? DEFAULT_MAX_MESSAGE;
    this.#fetch = o.fetch ?? ((input, init) => fetch(input, init));
  }

  /** What /status shows of the client: its endpoints, the one in use, and its counts. */
  status(): Record<string, unknown> {
    return { endpoints: this.endpoints, current: this.endpoints[this.#current], ...this.counts };
  }

  /** Sets `key` to `value` (optionally under a lease); returns the revision of the write. */
  async put(key: string, value: string, o: { lease?: string } = {}): Promise<number> {
    const body: Record<string, unknown> = { key: b64(key), value: b64(value) };
    if (o.lease) body.lease = o.lease;
    const r = await this.#call("/v3/kv/put", body, "put", key);
    return revisionOf(r);
  }

  /** The key, or undefined when it does not exist. */
  async get(key: string): Promise<KeyValue | undefined> {
    const r = await this.#call("/v3/kv/range", { key: b64(key) }, "get", key);
    return kvs(r.kvs)[0];
  }

  /** Every key starting with `prefix`, in key order (at most `limit` when given). */
  async range(prefix: string, o: { limit?: number } = {}): Promise<{ kvs: KeyValue[]; revision: number }> {
    const body: Record<string, unknown> = { key: b64(prefix), range_end: rangeEnd(prefix) };
    if (o.limit) body.limit = o.limit;
    const r = await this.#call("/v3/kv/range", body, "range", prefix);
    return { kvs: kvs(r.kvs), revision: revisionOf(r) };
  }

  /** Deletes `key` (or every key under it with `prefix`); returns how many went. */
  async delete(key: string, o: { prefix?: boolean } = {}): Promise<number> {
    const body: Record<string, unknown> = { key: b64(key) };
    if (o.prefix) body.range_end = rangeEnd(key);
    const r = await this.#call("/v3/kv/deleterange", body, "delete", key);
    return Number(r.deleted ?? 0);
  }

  /** If every compare holds, runs `success`, else `failure`: atomically, as one revision. */
  async txn(
    t: { compare: readonly Compare[]; success: readonly TxnOp[]; failure?: readonly TxnOp[] },
  ): Promise<TxnResult> {
    const what = t.compare[0]?.key ?? firstKey(t.success) ?? "";
    const r = await this.#call(
      "/v3/kv/txn",
      {
        compare: t.compare.map(compareJson),
        success: t.success.map(opJson),
        failure: (t.failure ?? []).map(opJson),
      },
      "txn",
      what,
    );
    const responses = Array.isArray(r.responses) ? r.responses as Record<string, unknown>[] : [];
    const gets = responses.filter((x) => x.response_range)
      .map((x) => kvs((x.response_range as Record<string, unknown>).kvs));
    return { succeeded: r.succeeded === true, gets, revision: revisionOf(r) };
  }

  /** Creates `key` only if it does not exist; false (and nothing written) when it does. */
  async create(key: string, value: string, o: { lease?: string } = {}): Promise<boolean> {
    const r = await this.txn({
      compare: [{ key, target: "create", value: 0 }],
      success: [{ put: { key, value, lease: o.lease } }],
    });
    return r.succeeded;
  }

  /** Sets `key` only if it was last written at `modRevision`; false when someone wrote it since. */
  async update(
    key: string,
    value: string,
    modRevision: number,
    o: { lease?: string } = {},
  ): Promise<boolean> {
    const r = await this.txn({
      compare: [{ key, target: "mod", value: modRevision }],
      success: [{ put: { key, value, lease: o.lease } }],
    });
    return r.succeeded;
  }

  /** A lease of `ttlSeconds`: keys put under it go when it expires or is revoked. */
  async leaseGrant(ttlSeconds: number): Promise<{ id: string; ttl: number }> {
    const r = await this.#call("/v3/lease/grant", { TTL: ttlSeconds }, "lease grant", `${ttlSeconds}s`);
    if (typeof r.ID !== "string" && typeof r.ID !== "number") {
      throw new EtcdRequestError("lease grant", `${ttlSeconds}s`, String(r.error ?? "no lease id"), 0);
    }
    return { id: String(r.ID), ttl: Number(r.TTL ?? 0) };
  }

  /** Renews the lease; returns its new TTL in seconds, 0 when the lease no longer exists. */
  async leaseKeepAlive(id: string): Promise<number> {
    // The gateway answers a streaming RPC's single request with one {"result": ...} object and ends.
    const r = await this.#call("/v3/lease/keepalive", { ID: id }, "lease keepalive", id);
    const result = (r.result ?? r) as Record<string, unknown>;
    return Number(result.TTL ?? 0);
  }

  /** Ends the lease now, deleting its keys. A lease already gone is not an error. */
  async leaseRevoke(id: string): Promise<void> {
    try {
      await this.#call("/v3/lease/revoke", { ID: id }, "lease revoke", id);
    } catch (error) {
      if (!(error instanceof EtcdRequestError && error.code === 5)) throw error;
    }
  }

  /**
   * Watches every key under `prefix`: `onEvents` gets each batch etcd sends, in revision order. A broken stream is
   * resumed (next endpoint, from the revision after the last seen) until `close()`; a compacted revision ends the
   * watch with an EtcdWatchError (the caller lists again and watches anew).
   */
  watch(prefix: string, onEvents: (events: WatchEvent[]) => void, o: WatchOptions = {}): Watch {
    const controller = new AbortController();
    const ready = Promise.withResolvers<void>();
    let next = o.startRevision ?? 0;
    let started = false;
    let ended = false;
    const end = (error?: Error) => {
      if (ended) return;
      ended = true;
      controller.abort();
      if (!started) ready.reject(error ?? new EtcdWatchError(prefix, "closed before it started"));
      o.onEnd?.(error);
    };
    ready.promise.catch(() => {}); // a caller that never awaits `ready` must not see an unhandled rejection
    const loop = async () => {
      let failures = 0;
      while (!controller.signal.aborted) {
        try {
          await this.#watchOnce(prefix, next, controller.signal, {
            created: (revision) => {
              failures = 0;
              // Watching "from now": a resume must go on from here, not from whatever "now" is then.
              if (next === 0) next = revision + 1;
              if (!started) {
                started = true;
                ready.resolve();
              }
            },
            events: (events) => {
              // Resume after the last event delivered (a message's header revision may run ahead of the
              // events still to come in a replay).
              for (const e of events) if (e.modRevision >= next) next = e.modRevision + 1;
              if (events.length) onEvents(events);
            },
          });
          if (controller.signal.aborted) return;
        } catch (error) {
          if (controller.signal.aborted) return;
          if (error instanceof EtcdWatchError) return end(error);
          // Not yet started: the start has a deadline like every call; report it instead of retrying for ever.
          if (!started && ++failures >= this.endpoints.length) {
            return end(error instanceof Error ? error : new EtcdWatchError(prefix, errorMessage(error)));
          }
        }
        if (started) this.counts.watch_resumes++;
        this.#current = (this.#current + 1) % this.endpoints.length;
        await sleep(this.#clock, WATCH_RETRY_MS, controller.signal);
      }
    };
    loop().catch((error) => end(error instanceof Error ? error : new Error(String(error))));
    return { ready: ready.promise, close: () => end() };
  }

  async #watchOnce(
    prefix: string,
    startRevision: number,
    signal: AbortSignal,
    on: { created: (revision: number) => void; events: (events: WatchEvent[]) => void },
  ): Promise<void> {
    const url = this.endpoints[this.#current] + "/v3/watch";
    const request: Record<string, unknown> = { key: b64(prefix), range_end: rangeEnd(prefix) };
    if (startRevision > 0) request.start_revision = startRevision;
    const start = deadline(this.#clock, this.#timeoutMs, signal);
    let response: Response;
    try {
      response = await this.#fetch(url, {
        method: "POST",
        body: JSON.stringify({ create_request: request }),
        headers: { "content-type": "application/json" },
        signal: start.signal,
      });
    } catch (error) {
      start.cancel();
      throw new EtcdUnreachableError(url, errorMessage(start.signal.reason ?? error));
    }
    if (!response.ok || !response.body) {
      start.cancel();
      const text = await response.text().catch(() => "");
      throw new EtcdWatchError(prefix, `HTTP ${response.status} ${text.slice(0, 200)}`);
    }
    const splitter = new JsonStreamSplitter(this.#maxMessage);
    const decoder = new TextDecoder();
    const reader = response.body.getReader();
    let created = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new EtcdUnreachableError(url, "the watch stream ended");
        for (const text of splitter.push(decoder.decode(value, { stream: true }))) {
          const message = parseJson(text);
          const result = (message?.result ?? undefined) as Record<string, unknown> | undefined;
          if (!result) {
            // The gateway reports a broken stream in-band: {"error": {"grpc_code": 14, ...}} when the member
            // shuts down. Those codes are resumed (next endpoint, same revision); anything else ends the watch.
            const error = message?.error as Record<string, unknown> | undefined;
            if (error && RESUMABLE_GRPC_CODES.has(Number(error.grpc_code))) {
              throw new EtcdUnreachableError(url, String(error.message ?? "unavailable"));
            }
            throw new EtcdWatchError(prefix, `unexpected message ${text.slice(0, 200)}`);
          }
          if (result.canceled) {
            const reason = String(result.cancel_reason ?? "canceled by etcd");
            throw new EtcdWatchError(prefix, result.compact_revision ? `compacted: ${reason}` : reason);
          }
          if (result.created && !created) {
            created = true;
            start.cancel();
            on.created(revisionOf(result));
          }
          const events = Array.isArray(result.events) ? result.events.map(watchEvent) : [];
          on.events(events);
        }
      }
    } catch (error) {
      if (error instanceof SplitterOverflow) throw new EtcdWatchError(prefix, error.message);
      if (error instanceof EtcdWatchError || error instanceof EtcdUnreachableError) throw error;
      throw new EtcdUnreachableError(url, errorMessage(start.signal.reason ?? error));
    } finally {
      start.cancel();
      reader.cancel().catch(() => {});
    }
  }

  async #call(
    path: string,
    body: unknown,
    op: string,
    key: string,
  ): Promise<Record<string, unknown>> {
    this.counts.requests++;
    const d = deadline(this.#clock, this.#timeoutMs);
    const text = JSON.stringify(body);
    let lastUrl = this.endpoints[this.#current];
    let lastError = "";
    try {
      for (let tried = 0; tried < this.endpoints.length; tried++) {
        const index = (this.#current + tried) % this.endpoints.length;
        const url = this.endpoints[index] + path;
        lastUrl = this.endpoints[index];
        let response: Response;
        let answer: string;
        try {
          response = await this.#fetch(url, {
            method: "POST",
            body: text,
            headers: { "content-type": "application/json" },
            signal: d.signal,
          });
          answer = await response.text();
        } catch (error) {
          if (d.signal.aborted) {
            lastError = errorMessage(d.signal.reason);
            break;
          }
          lastError = errorMessage(error);
          this.counts.failovers++;
          continue;
        }
        const json = parseJson(answer);
        if (response.ok && json) {
          this.#current = index;
          return json;
        }
        const code = Number(json?.code ?? 0);
        const detail = String(
          json?.message ?? json?.error ?? `HTTP ${response.status} ${answer.slice(0, 200)}`,
        );
        if (code === UNAVAILABLE) {
          lastError = detail;
          this.counts.failovers++;
          continue;
        }
        this.counts.refused++;
        throw new EtcdRequestError(op, key, detail, code);
      }
      this.counts.unreachable++;
      throw new EtcdUnreachableError(
        this.endpoints.length > 1 ? this.endpoints.join(", ") : lastUrl,
        lastError,
      );
    } finally {
      d.cancel();
    }
  }
}

class SplitterOverflow extends Error {
  override name = "SplitterOverflow";
}

/**
 * Cuts a stream of concatenated JSON objects (what grpc-gateway sends for a server stream, newline-separated or
 * not) into one text per object, however the stream is chunked. Holds at most `max` characters of an unfinished
 * object; more is an error (a bound on memory, whatever the peer sends).
 */
export class JsonStreamSplitter {
  #pending = "";
  #depth = 0;
  #inString = false;
  #escaped = false;
  /** Where the current object starts in #pending; -1 between objects. */
  #start = -1;
  #scanned = 0;

  constructor(readonly max: number) {}

  push(chunk: string): string[] {
    this.#pending += chunk;
    const out: string[] = [];
    for (let i = this.#scanned; i < this.#pending.length; i++) {
      const c = this.#pending.charCodeAt(i);
      if (this.#inString) {
        if (this.#escaped) this.#escaped = false;
        else if (c === 0x5c) this.#escaped = true; // backslash
        else if (c === 0x22) this.#inString = false;
        continue;
      }
      if (c === 0x22 && this.#depth > 0) this.#inString = true;
      else if (c === 0x7b) { // {
        if (this.#depth++ === 0) this.#start = i;
      } else if (c === 0x7d && this.#depth > 0) { // }
        if (--this.#depth === 0) {
          out.push(this.#pending.slice(this.#start, i + 1));
          this.#start = -1;
        }
      }
    }
    // Keep only the unfinished object; whole objects and whitespace between them are done.
    this.#pending = this.#start >= 0 ? this.#pending.slice(this.#start) : "";
    if (this.#start >= 0) this.#start = 0;
    this.#scanned = this.#pending.length;
    if (this.#pending.length > this.max) {
      throw new SplitterOverflow(`a message over ${this.max} bytes`);
    }
    return out;
  }
}

function watchEvent(e: Record<string, unknown>): WatchEvent {
  const kv = (e.kv ?? {}) as Record<string, unknown>;
  return {
    type: e.type === "DELETE" ? "delete" : "put",
    key: unb64(String(kv.key ?? "")),
    value: unb64(String(kv.value ?? "")),
    modRevision: Number(kv.mod_revision ?? 0),
  };
}

function kvs(list: unknown): KeyValue[] {
  if (!Array.isArray(list)) return [];
  return list.map((kv: Record<string, unknown>) => ({
    key: unb64(String(kv.key ?? "")),
    value: unb64(String(kv.value ?? "")),
    createRevision: Number(kv.create_revision ?? 0),
    modRevision: Number(kv.mod_revision ?? 0),
    version: Number(kv.version ?? 0),
    lease: String(kv.lease ?? "0"),
  }));
}

function revisionOf(r: Record<string, unknown>): number {
  return Number((r.header as Record<string, unknown> | undefined)?.revision ?? 0);
}

const TARGETS = { create: "CREATE", mod: "MOD", version: "VERSION", value: "VALUE" } as const;
const FIELDS = {
  create: "create_revision",
  mod: "mod_revision",
  version: "version",
  value: "value",
} as const;

function compareJson(c: Compare): Record<string, unknown> {
  return {
    key: b64(c.key),
    target: TARGETS[c.target],
    result: (c.result ?? "equal").toUpperCase(),
    [FIELDS[c.target]]: c.target === "value" ? b64(String(c.value)) : String(c.value),
  };
}

function opJson(op: TxnOp): Record<string, unknown> {
  if ("put" in op) {
    const put: Record<string, unknown> = { key: b64(op.put.key), value: b64(op.put.value) };
    if (op.put.lease) put.lease = op.put.lease;
    return { request_put: put };
  }
  if ("delete" in op) {
    const del: Record<string, unknown> = { key: b64(op.delete.key) };
    if (op.delete.prefix) del.range_end = rangeEnd(op.delete.key);
    return { request_delete_range: del };
  }
  const get: Record<string, unknown> = { key: b64(op.get.key) };
  if (op.get.prefix) get.range_end = rangeEnd(op.get.key);
  return { request_range: get };
}

function firstKey(ops: readonly TxnOp[]): string | undefined {
  const op = ops[0];
  if (!op) return undefined;
  return "put" in op ? op.put.key : "delete" in op ? op.delete.key : op.get.key;
}

function parseJson(text: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(text);
    return v && typeof v === "object" && !Array.isArray(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function bytesB64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** Text as the gateway's base64 bytes. */
export function b64(text: string): string {
  return bytesB64(encoder.encode(text));
}

export function unb64(text: string): string {
  try {
    const s = atob(text);
    const bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    return decoder.decode(bytes);
  } catch {
    return "";
  }
}

/** The range_end that makes a range cover every key starting with `prefix` (etcd's "prefix" convention). */
export function rangeEnd(prefix: string): string {
  const bytes = encoder.encode(prefix);
  let n = bytes.length;
  while (n > 0 && bytes[n - 1] === 0xff) n--;
  if (n === 0) return bytesB64(new Uint8Array([0])); // every key
  const end = bytes.slice(0, n);
  end[n - 1]++;
  return bytesB64(end);
}

function sleep(clock: Clock, ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const id = clock.setTimeout(done, ms);
    function done() {
      clock.clearTimeout(id);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
