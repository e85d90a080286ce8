/**
 * The last line of defence of a long-running process: an error that escapes a timer, a loop or a promise nobody
 * awaited is logged (with what it was) and the process goes on, instead of Deno ending it and every stream it
 * carries. Each part still handles its own errors; this only catches what slipped past, and counts it so that
 * /status can show that something did.
 */
import type { Logger } from "./logger.ts";

export interface ProcessGuard extends Disposable {
  /** Errors and rejections caught since the guard was installed. */
  readonly caught: number;
}

/** Installs the guard on `target` (the global scope by default) until disposed. */
export function guardProcess(logger: Logger, target: EventTarget = globalThis): ProcessGuard {
  let caught = 0;
  const describe = (value: unknown) =>
    value instanceof Error ? `${value.name}: ${value.message}` : String(value);
  const onError = (event: Event) => {
    event.preventDefault();
    caught++;
    const e = event as ErrorEvent;
    logger.error("uncaught error; the node stays up", {
      error: e.error !== undefined ? describe(e.error) : e.message,
      stack: e.error instanceof Error ? e.error.stack : undefined,
    });
  };
  const onRejection = (event: Event) => {
    event.preventDefault();
    caught++;
    const reason = (event as PromiseRejectionEvent).reason;
    logger.error("unhandled rejection; the node stays up", {
      error: describe(reason),
      stack: reason instanceof Error ? reason.stack : undefined,
    });
  };
  target.addEventListener("error", onError);
  target.addEventListener("unhandledrejection", onRejection);
  return {
    get caught() {
      return caught;
    },
    [Symbol.dispose]() {
      target.removeEventListener("error", onError);
      target.removeEventListener("unhandledrejection", onRejection);
    },
  };
}
