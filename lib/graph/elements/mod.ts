/**
 * The core active programs every node offers, by the `ref` that names them in a program: duplicator, forwarder,
 * saver, player, counter and reflector (Appendix A writes the reflector's ref as plain `reflector`).
 */
import { Registry } from "../../core/registry.ts";
import type { ElementKind } from "../element.ts";
import { counter } from "./counter.ts";
import { duplicator } from "./duplicator.ts";
import { forwarder } from "./forwarder.ts";
import { player } from "./player.ts";
import { reflectorElement } from "./reflector.ts";
import { saver } from "./saver.ts";
import { syncer } from "./syncer.ts";
import { transcoder } from "./transcoder.ts";

export function coreElements(): Registry<ElementKind> {
  return new Registry<ElementKind>("AP kind", [
    duplicator,
    forwarder,
    saver,
    player,
    counter,
    reflectorElement,
    syncer,
    transcoder,
  ] as ElementKind[]);
}
