/**
 * `Image`: an image defined in code, built on the server step by step (each step's layer
 * cached), as the Python SDK's `corral.Image`; and your images, listed, looked up and
 * deleted. Copying local files in (`add_local_file` in Python) is left out: the SDK has no
 * file system to read; write files with `sb.files` and snapshot them
 * (`sb.snapshotFilesystem`), or build with the Python SDK or `corral image build`.
 *
 * ```ts
 * const image = Image.base("python").runCommands("pip download --help >/dev/null")
 *   .env({ MODE: "prod" }).workdir("/app");
 * const info = await image.build({ name: "my-env:1", onLog: console.log });
 * const sb = await Sandbox.create({ image: "my-env:1" });   // or { image } to build first
 * ```
 */

import { CorralError, errorFromCode } from "./errors.js";
import { ApiClient, type Abortable, type ConnectionOptions, segment } from "./http.js";
import { lines } from "./ndjson.js";
import type { ImageInfo, Schemas } from "./types.js";

export type ImageSpec = Schemas["ImageSpec"];
type Step = ImageSpec["steps"][number];
type BuildEvent = Schemas["BuildEvent"];

export interface BuildOptions extends Abortable {
  /** What to call it (`my-env:1`); unnamed, use its `id`. */
  name?: string;
  /** Gets the build's lines as they come (`[2/3] RUN ...`, then the step's output). */
  onLog?: (line: string) => void;
  /** The runtime the steps run on; default the server's. */
  runtime?: string;
}

export class Image {
  readonly #spec: ImageSpec;

  private constructor(spec: ImageSpec) {
    this.#spec = spec;
  }

  /** Start from an image the server has: a public one (`python`) or yours (`my-env:1`,
   * or its `sha256:` id). */
  static base(name = "python"): Image {
    return new Image({ base: name, steps: [], labels: {} });
  }

  /** Debian bookworm with its Python 3.11 and pip: the server's `python` image. */
  static debianSlim(): Image {
    return Image.base("python");
  }

  #with(step: Step): Image {
    return new Image({ ...this.#spec, steps: [...this.#spec.steps, step] });
  }

  /** `apt-get install` Debian packages (as root, from the operator's mirror). */
  aptInstall(...packages: string[]): Image {
    return this.#with({ kind: "apt", packages });
  }

  /** `pip install` packages (`name`, `name==1.2`, `name[extra]>=1`). */
  pipInstall(packages: string[], options: { indexUrl?: string } = {}): Image {
    return this.#with({ kind: "pip", packages, index_url: options.indexUrl });
  }

  /** `npm install --global` packages (the image must have npm). */
  npmInstall(...packages: string[]): Image {
    return this.#with({ kind: "npm", packages });
  }

  /** Run each command (a shell string, or an argv list) as the image's user. */
  runCommands(...commands: (string | string[])[]): Image {
    return commands.reduce<Image>((image, command) => image.#with({ kind: "run", command }), this);
  }

  /** Environment variables for later steps and the image's sandboxes. */
  env(variables: Record<string, string>): Image {
    return this.#with({ kind: "env", env: variables });
  }

  /** The working directory of later steps and of commands (made if missing). */
  workdir(path: string): Image {
    return this.#with({ kind: "workdir", path });
  }

  /** The user later `runCommands` steps run as. */
  user(name: string): Image {
    return this.#with({ kind: "user", user: name });
  }

  /** The definition as the server takes it. */
  get spec(): ImageSpec {
    return structuredClone(this.#spec);
  }

  /** Build it on the server; the image once built. A failed step throws
   * `BuildFailedError` naming it, with its output. */
  build(options: BuildOptions & ConnectionOptions = {}): Promise<ImageInfo> {
    return buildWith(new ApiClient(options), this, options);
  }
}

/** @internal Build `image` through `api`, following the build's events to its end. */
export async function buildWith(api: ApiClient, image: Image, options: BuildOptions): Promise<ImageInfo> {
  const body: Schemas["ImageBuildRequest"] = {
    spec: image.spec, name: options.name, runtime: options.runtime,
  };
  const response = await api.call("POST", "/v1/images",
    { json: body, signal: options.signal, timeoutMs: null });
  for await (const event of lines<BuildEvent>(response.body, options.signal)) {
    switch (event.type) {
      case "step":
        options.onLog?.(`[${event.step}/${event.total}] ${event.text}${event.cached ? " (cached)" : ""}`);
        break;
      case "log":
        options.onLog?.(event.text);
        break;
      case "done":
        return event.image;
      case "error":
        throw errorFromCode(event.error.code, event.error.message);
    }
  }
  throw new CorralError("the build's stream ended before it did");
}

export type ImageCallOptions = ConnectionOptions & Abortable;

/** Your images (and the public ones): listed, described, their names deleted. */
export const Images = {
  /** Every image you may start from, with your quota and its use. */
  list(options: ImageCallOptions = {}): Promise<Schemas["ImageList"]> {
    return new ApiClient(options).json<Schemas["ImageList"]>("GET", "/v1/images",
      { signal: options.signal });
  },

  /** One image, by name or `sha256:` id. */
  async get(ref: string, options: ImageCallOptions = {}): Promise<ImageInfo> {
    return new ApiClient(options).json<ImageInfo>("GET", `/v1/images/${segment(ref)}`,
      { signal: options.signal });
  },

  /** Forget your name `ref` (or every name of an id); `corral image prune` frees the disk. */
  async delete(ref: string, options: ImageCallOptions = {}): Promise<void> {
    return new ApiClient(options).send("DELETE", `/v1/images/${segment(ref)}`,
      { signal: options.signal });
  },
};
