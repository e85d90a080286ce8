/**
 * Guards for mutating routes: a bearer token from the config, compared in constant time. Without a configured token
 * every mutating route answers 403, so a box is read-only until its operator sets one.
 */
import type { MiddlewareHandler } from "hono";

const encoder = new TextEncoder();

function sameText(a: string, b: string): boolean {
  const x = encoder.encode(a);
  const y = encoder.encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

export function requireToken(token: string | null): MiddlewareHandler {
  return async function requireTokenMiddleware(c, next) {
    if (token === null) {
      return c.json(
        { error: "Mutating routes are off: set status.token in the config to turn them on" },
        403,
      );
    }
    const header = c.req.header("authorization") ?? "";
    const m = /^Bearer\s+(.+)$/i.exec(header);
    if (!m || !sameText(m[1].trim(), token)) {
      c.header("WWW-Authenticate", 'Bearer realm="edgenode"');
      return c.json({ error: "Missing or wrong bearer token" }, 401);
    }
    await next();
  };
}
