/**
 * Failures that are this host's own, not a peer's: out of descriptors (EMFILE, ENFILE), of socket buffers (ENOBUFS),
 * of memory (ENOMEM) or of local ports (EADDRNOTAVAIL on connect). A scheduler must not count them against a
 * server (marking a healthy server down because this process ran out of descriptors) nor against a client.
 */

/** The error codes, by name as Deno reports them (`error.code`) and by number as libc does. */
export const LOCAL_SHORTAGES: Readonly<Record<string, number>> = {
  EMFILE: 24,
  ENFILE: 23,
  ENOBUFS: 105,
  ENOMEM: 12,
  EADDRNOTAVAIL: 99,
};

const BY_NUMBER = new Map(Object.entries(LOCAL_SHORTAGES).map(([name, n]) => [n, name]));

/** An accept or a connect that failed for want of something on this host. */
export class LocalShortage extends Error {
  override name = "LocalShortage";
  /** "accept" or "connect"; `code` the errno name ("EMFILE"). */
  constructor(
    message: string,
    readonly op: "accept" | "connect",
    readonly code: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** The errno name when `errno` is a local shortage, else null. */
export function shortageOfErrno(errno: number): string | null {
  return BY_NUMBER.get(errno) ?? null;
}

/** The errno name when `error` (thrown by a Deno socket call) is a local shortage, else null. */
export function shortageOf(error: unknown): string | null {
  if (error instanceof LocalShortage) return error.code;
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && code in LOCAL_SHORTAGES ? code : null;
}
