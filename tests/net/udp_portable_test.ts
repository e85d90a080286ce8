import { openFastUdp } from "../../lib/net/udp_fast.ts";
import { openPortableUdp } from "../../lib/net/udp_portable.ts";
import { udpContract } from "./udp_contract.ts";

udpContract(
  "portable",
  openPortableUdp,
  (addr, options) => openFastUdp(addr, options) ?? openPortableUdp(addr, options),
);
