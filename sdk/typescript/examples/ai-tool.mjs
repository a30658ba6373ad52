// A Corral sandbox as a tool of the Vercel AI SDK (`ai`): the model writes Python, the
// sandbox runs it, the model reads the result. Here the model is `ai/test`'s
// MockLanguageModelV3, scripted to call the tool once and then answer, so the example runs
// without a model provider; swap in a real one (`openai("gpt-4.1")`, ...) unchanged.
//
//   CORRAL_URL=http://127.0.0.1:8470 CORRAL_API_KEY=crl_... node examples/ai-tool.mjs
//
// Every tool parameter is attacker-controlled: the code runs only inside the sandbox, and
// nothing the model says reaches the host.
import { generateText, stepCountIs, tool } from "ai";
import { MockLanguageModelV3 } from "ai/test";
import { z } from "zod";
import { Sandbox } from "@corral/sdk";

const usage = {
  inputTokens: { total: 10, noCache: 10, cacheRead: 0, cacheWrite: 0 },
  outputTokens: { total: 10, text: 10, reasoning: 0 },
};

/** A model that first asks to run code, then answers with what the tool returned. */
function scriptedModel() {
  let step = 0;
  return new MockLanguageModelV3({
    doGenerate: async (call) => {
      step += 1;
      if (step === 1) {
        return {
          content: [{
            type: "tool-call", toolCallId: "call-1", toolName: "runPython",
            input: JSON.stringify({ code: "import math\nsum(math.factorial(n) for n in range(10))" }),
          }],
          finishReason: { unified: "tool-calls", raw: "tool_calls" }, usage, warnings: [],
        };
      }
      const result = call.prompt.at(-1).content.find((part) => part.type === "tool-result");
      return {
        content: [{ type: "text", text: `The sum is ${result.output.value.text}.` }],
        finishReason: { unified: "stop", raw: "stop" }, usage, warnings: [],
      };
    },
  });
}

/** The tool: one Python cell in the sandbox; its value, output and error go back. */
function runPythonTool(sandbox) {
  return tool({
    description: "Run Python code in a sandbox (state persists between calls) and return " +
      "its value, its printed output and its error, if any.",
    inputSchema: z.object({ code: z.string().max(100_000).describe("the Python code to run") }),
    execute: async ({ code }, { abortSignal }) => {
      const execution = await sandbox.runCode(code, { timeout: 30, signal: abortSignal });
      return {
        text: execution.text,
        stdout: execution.logs.stdout.join("").slice(-10_000),
        error: execution.error && `${execution.error.name}: ${execution.error.value}`,
      };
    },
  });
}

const sandbox = await Sandbox.create({ image: "python", timeout: 300 });
try {
  const answer = await generateText({
    model: scriptedModel(),
    tools: { runPython: runPythonTool(sandbox) },
    stopWhen: stepCountIs(3),
    prompt: "What is the sum of the factorials of 0 to 9?",
  });
  console.log(answer.text);
} finally {
  await sandbox.kill();
}
