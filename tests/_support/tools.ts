/**
 * Finding the real peers a test needs (haproxy, nginx, ffmpeg, ...): a missing one fails the test naming the Debian
 * package to install, never skips it silently.
 */
import assert from "node:assert/strict";

/**
 * The full path of each of `names`, from PATH or the sbin folders (where Debian puts haproxy, and which a CI's PATH
 * may lack); fails naming what is missing and what to install (`install`).
 */
export async function requireTools(
  what: string,
  names: readonly string[],
  install: string,
): Promise<Record<string, string>> {
  const dirs = [
    ...(Deno.env.get("PATH") ?? "").split(":").filter(Boolean),
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
  ];
  const found: Record<string, string> = {};
  for (const name of names) {
    for (const dir of dirs) {
      const info = await Deno.stat(`${dir}/${name}`).catch(() => null);
      if (info?.isFile && (info.mode ?? 0o111) & 0o111) {
        found[name] = `${dir}/${name}`;
        break;
      }
    }
  }
  const missing = names.filter((name) => !(name in found));
  if (missing.length) {
    assert.fail(
      `Cannot run ${what}: ${missing.join(", ")} not found on PATH or in /usr/sbin. Install ${install}.`,
    );
  }
  return found;
}
