// A consumer of the built package, type-checked only (tsc --noEmit): the published
// declarations stand alone (schema.d.ts ships beside them) and type what the calls return.
import {
  CorralError, NotFoundError, Sandbox, type CommandResult, type EntryInfo, type Execution,
  type SandboxInfo, type components,
} from "@corral/sdk";

export async function use(signal: AbortSignal): Promise<number> {
  const sb: Sandbox = await Sandbox.create({ image: "python", network: { allow: ["10.0.0.0/8"] }, signal });
  const info: SandboxInfo = sb.info;
  const result: CommandResult = await sb.commands.run(["ls"], { onStdout: (text: string) => text });
  const entries: EntryInfo[] = await sb.files.list("/work", { depth: 2 });
  const execution: Execution = await sb.runCode("1", { onResult: (r) => r.html });
  const wire: components["schemas"]["CommandResult"] = result;
  try {
    await sb.files.read("/nope");
  } catch (error) {
    if (error instanceof NotFoundError) return error.status ?? 0;
    if (error instanceof CorralError) return error.code.length;
  }
  // @ts-expect-error: not a field of the wire's result
  void result.exitCode;
  // @ts-expect-error: not a policy the server takes
  await sb.network.update("some");
  return info.id.length + entries.length + (execution.text?.length ?? 0) + wire.exit_code;
}
