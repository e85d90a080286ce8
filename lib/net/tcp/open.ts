/** Picks the TCP transport a config names (lib/net/tcp/transport.ts): `auto` takes the fast one where it can. */
import { StartError } from "../../core/errors.ts";
import { openFastTransport } from "./fast/transport.ts";
import { portableTransport } from "./portable.ts";
import type { Transport, TransportChoice } from "./transport.ts";

export function openTransport(choice: TransportChoice): Transport {
  if (choice !== "portable") {
    const fast = openFastTransport();
    if (fast) return fast;
    if (choice === "fast") {
      throw new StartError("Cannot use the fast TCP path: it needs Linux and --allow-ffi (set io: portable)");
    }
  }
  return portableTransport;
}
