/**
 * An inference worker: holds the bundles it has loaded (one session set per bundle) and runs whole generations,
 * so the sampling loop never crosses threads and the main thread only sees progress and results.
 */
import { parentPort, workerData } from "node:worker_threads";
import { loadBundle, SessionConfigSchema, type Bundle } from "../pipeline/bundle.ts";
import { generateBatch, resolveRequest } from "../pipeline/pipeline.ts";
import type { FromWorker, ToWorker, WorkerInit } from "./protocol.ts";
import type { ControlNetMode } from "../addons/controlnet-mode.ts";
import { LoraFold } from "../addons/fold.ts";
import { joinStepOf, lateAddons } from "../addons/late-join.ts";
import type { RequestAddons } from "../addons/request-addons.ts";
import { AddonRuntime } from "../addons/runtime.ts";
import { fromWire, toWire } from "../errors.ts";
import type { UnetInputProvider } from "../pipeline/pipeline.ts";

const port = parentPort;
if (port === null) throw new Error("inference-worker must run in a worker thread");
const init = workerData as WorkerInit;
const session = SessionConfigSchema.parse(init.session);
const bundles = new Map<string, Promise<Bundle>>();
const addonRuntime = new AddonRuntime(session, {
  parallelControlNet: init.parallelControlNet ?? "auto",
  ...(init.mergeHotAfter !== undefined ? { mergeHotAfter: init.mergeHotAfter } : {}),
  ...(init.foldLoras !== undefined ? { foldLoras: init.foldLoras } : {}),
});

function bundle(dir: string): Promise<Bundle> {
  let loading = bundles.get(dir);
  if (loading === undefined) {
    loading = loadBundle(dir, session);
    // The sessions its add-ons use (folded LoRA sets, the ControlNet cut) are built beside the first jobs.
    loading.then(
      (b) => addonRuntime.prepare(b),
      () => {},
    );
    // A bundle that failed to load is not cached: the next job retries (the files may have been fixed).
    loading.catch(() => bundles.delete(dir));
    bundles.set(dir, loading);
  }
  return loading;
}

/** Add-ons that follow their job ("addons" messages), by job id. */
const lateArrivals = new Map<number, { resolve: (a: RequestAddons[]) => void; reject: (e: Error) => void }>();

port.on("message", async (msg: ToWorker) => {
  if (msg.type === "addons" || msg.type === "addons-failed") {
    const waiting = lateArrivals.get(msg.id);
    lateArrivals.delete(msg.id);
    if (msg.type === "addons") waiting?.resolve(msg.addons);
    else waiting?.reject(fromWire(msg.error));
    return;
  }
  const send = (m: FromWorker, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);
  const cancel = new Int32Array(msg.cancelFlag);
  const controller = new AbortController();
  // Registered before anything is awaited: the "addons" message may come while the bundle is still loading.
  const arrival =
    msg.addonJoinFraction === undefined
      ? undefined
      : new Promise<RequestAddons[]>((resolve, reject) => lateArrivals.set(msg.id, { resolve, reject }));
  arrival?.catch(() => {}); // a failure reaches the generation through `await` or the late provider below
  try {
    let loaded = await bundle(msg.bundleDir);
    const imagesPer = msg.requests.map((r) => resolveRequest(r).n);
    let unetInputs: UnetInputProvider | undefined;
    // Late add-ons run their ControlNets in sequence: their batch cannot know in advance to run its U-Net split.
    let cnMode: ControlNetMode | undefined;
    let joinedAt: () => number | null = () => (msg.addons ? 0 : null);
    let addons = msg.addons;
    // Merged weights are needed before the first step, text-encoder branches before the prompt is encoded:
    // such a model waits for its add-ons.
    const merging = loaded.manifest.lora?.mode === "merge" || addonRuntime.textEncoderLoras(loaded);
    // Add-ons due by step 0 that will fold (one LoRA set for the batch, known by its key before the files come) are
    // waited for before the prompt is encoded instead of at step 0: the batch then runs on the set's merged weights
    // rather than the branches, and applies them from step 0 either way (only the text encoding's overlap is lost).
    const dueFirst =
      msg.addonJoinFraction !== undefined &&
      joinStepOf(msg.addonJoinFraction, resolveRequest(msg.requests[0]!).steps ?? loaded.manifest.default_steps) === 0;
    const folds =
      dueFirst &&
      LoraFold.eligible(loaded) &&
      msg.loraSets !== undefined &&
      msg.loraSets.length > 0 &&
      msg.loraSets[0] !== "" &&
      msg.loraSets.every((k) => k === msg.loraSets![0]);
    const waitFirst = merging || folds;
    if (waitFirst && arrival) {
      addons = await arrival;
      joinedAt = () => 0;
    }
    let arrived = addons;
    if (addons) loaded = await addonRuntime.bundleFor(loaded, addons);
    if (arrival && msg.addonJoinFraction !== undefined && !waitFirst) {
      // A hot set's merged weights are picked by the set's key; the arriving add-ons count towards making it hot.
      const base = loaded;
      if (msg.loraSets) loaded = addonRuntime.hotMerged(base, msg.loraSets) ?? base;
      arrival.then(
        (a) => {
          arrived = a;
          addonRuntime.countUse(base, a);
        },
        () => {},
      );
      const late = lateAddons(
        arrival.then((a) => addonRuntime.provider(loaded, imagesPer, a)),
        msg.addonJoinFraction,
      );
      unetInputs = late.provider;
      joinedAt = late.joinedAt;
    } else if (addons) {
      cnMode = addonRuntime.controlNetMode(loaded, addons);
      unetInputs = await addonRuntime.provider(loaded, imagesPer, addons, cnMode);
    }
    // In parallel, the U-Net runs split where the residuals enter (or as its DeepCache parts where it cannot).
    const overlap = cnMode === "parallel" ? await addonRuntime.overlapParts(loaded) : undefined;
    const results = await generateBatch(loaded, msg.requests, {
      ...(overlap ? { overlap } : {}),
      ...(unetInputs ? { unetInputs } : {}),
      ...(addons ? { textEncoderInputs: addonRuntime.textInputs(loaded, imagesPer, addons) } : {}),
      splitUnet: cnMode === "parallel" && overlap === undefined,
      signal: controller.signal,
      onProgress: ({ step, steps }) => {
        if (Atomics.load(cancel, 0) === 1) controller.abort(new Error("generation canceled"));
        send({ type: "progress", id: msg.id, step, steps });
      },
    });
    if (cnMode && addons) {
      const r = results[0]!;
      addonRuntime.recordControlNet(loaded, addons, cnMode, r.timings.unetMs / r.steps);
    }
    const buffers = results.flatMap((r) => [...r.images.map((img) => img.buffer), r.latents.buffer]) as ArrayBuffer[];
    const loraLoads = arrived ? addonRuntime.loraReports(loaded, arrived) : [];
    send(
      {
        type: "result",
        id: msg.id,
        results,
        addonsJoinedAt: joinedAt(),
        // Merged into a session's weights (hot set, merge mode); a folded set is fed as inputs and does not count.
        lorasMerged: loaded.lorasMerged !== undefined && loaded.lorasFolded !== true,
        loraLoads,
      },
      buffers,
    );
  } catch (err) {
    send({ type: "error", id: msg.id, error: toWire(err) });
  } finally {
    lateArrivals.delete(msg.id);
    addonRuntime.endBatch();
  }
});
