/** The three-part program the multi-process cluster tests start: In on brno, Mid on prague, Last (a counter) on liberec. */
export const splitProgram = (inPort: number, midPort: number) =>
  `Project split;
{ AP name="In" ref=localservice.forwarder; node = "brno"; inputs = in(DIPRONN_INPUT(${inPort})); outputs = out(Mid.in); }
{ AP name="Mid" ref=localservice.forwarder; node = "prague"; inputs = in, side(DIPRONN_INPUT(${midPort})); outputs = out(Last.in); }
{ AP name="Last" ref=localservice.counter; node = "liberec"; inputs = in; }
`;
