/** Session programs the tests start: what arrives on a DIPRONN_INPUT port is forwarded to a counter AP ("Count"). */
export const countingProgram = (name: string, port: number): string =>
  `Project ${name};
{ AP name="In" ref=localservice.forwarder;
    inputs = in(DIPRONN_INPUT(${port}));
    outputs = out(Count.in);
}
{ AP name="Count" ref=localservice.counter;
    inputs = in;
}
`;
