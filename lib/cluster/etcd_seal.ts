/**
 * What a cluster derives from its token for etcd, and the seal on every value it stores there. etcd is reached over
 * plain HTTP and anyone who can write it could otherwise put sessions and parts that a node then runs: each value
 * carries an HMAC-SHA256 over its key and its text, under a key derived from the cluster token, and a value that
 * does not verify is refused (counted, shown in /status). The MAC binds the key, so a value copied to another key
 * does not verify; an old value put back at its own key still does (etcd's revisions, not the seal, order writes).
 *
 * Both derivations are HMAC-SHA256 of the token under their own label, distinct from the request-signing key
 * (lib/cluster/auth.ts, the token itself): the key prefix reveals nothing usable to sign values or requests. Any
 * prefix computed from the token lets a reader of etcd test token guesses offline: the token's length (>= 16
 * characters, better random) is the defence.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

const PREFIX_LABEL = "edgenode etcd key prefix v1";
const VALUE_LABEL = "edgenode etcd value seal v1";
/** Sealed values read "s1.<43 base64url characters of MAC>.<text>". */
const TAG = "s1.";
const MAC_CHARS = 43;

export interface EtcdSecrets {
  /** The cluster's directory name under /edgenode/: "c" and 32 hex digits. */
  readonly prefix: string;
  /** The key that seals stored values. */
  readonly valueKey: Uint8Array;
}

export function etcdSecrets(token: string): EtcdSecrets {
  const derive = (label: string) => new Uint8Array(createHmac("sha256", token).update(label).digest());
  const id = derive(PREFIX_LABEL).subarray(0, 16);
  return {
    prefix: "c" + [...id].map((b) => b.toString(16).padStart(2, "0")).join(""),
    valueKey: derive(VALUE_LABEL),
  };
}

function mac(valueKey: Uint8Array, key: string, text: string): string {
  return createHmac("sha256", valueKey).update(key).update("\0").update(text).digest("base64url");
}

/** The value to store at `key`. */
export function seal(valueKey: Uint8Array, key: string, text: string): string {
  return `${TAG}${mac(valueKey, key, text)}.${text}`;
}

/** The text of a value read at `key`, or undefined when it carries no valid seal. */
export function unseal(valueKey: Uint8Array, key: string, stored: string): string | undefined {
  if (!stored.startsWith(TAG) || stored.charAt(TAG.length + MAC_CHARS) !== ".") return undefined;
  const given = new TextEncoder().encode(stored.slice(TAG.length, TAG.length + MAC_CHARS));
  const text = stored.slice(TAG.length + MAC_CHARS + 1);
  const want = new TextEncoder().encode(mac(valueKey, key, text));
  return given.length === want.length && timingSafeEqual(given, want) ? text : undefined;
}
