"""LightX2V Feature Cache: skip whole DiT passes on long multi-step runs (TeaCache, MagCache, adaptive)."""

from comfy_api.latest import io

from ..lightx2v_nodes.cache import tables
from ..lightx2v_nodes.cache.comfy_cache import apply_feature_cache
from ..lightx2v_nodes.cache.settings import METHODS, CacheSettings
from .base import LightX2VNode


class FeatureCache(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VFeatureCache",
            display_name="LightX2V Feature Cache",
            category="LightX2V",
            description="Skips all transformer blocks on steps where the model's output barely changes and reuses "
                        "the residual of the last computed step. For 30-50 step runs with CFG; runs of 8 steps or "
                        "fewer (4-step distilled models) are left untouched with a warning. Works with any sampler "
                        "node. Logs the skipped steps and the speed-up at the end of each run.",
            inputs=[
                io.Model.Input("model", tooltip="A model from LightX2V Load Wan DiT (for native models use ComfyUI's EasyCache)."),
                io.Combo.Input("method", options=list(METHODS), default="teacache",
                               tooltip="teacache: accumulates the change of the timestep embedding through per-model "
                                       "coefficients. magcache: accumulates per-step residual-magnitude ratios (built-in "
                                       "for T2V 1.3B and I2V 480p, or from a calibration file). adaptive: EasyCache-style, "
                                       "predicts the output change from the input change, needs no per-model numbers. "
                                       "magcache-calibrate: skips nothing, records this model's ratios and saves them to "
                                       "models/magcache/<calibration_file>.json."),
                io.Float.Input("threshold", default=-1.0, min=-1.0, max=5.0, step=0.01,
                               tooltip="Higher skips more. -1 = the method's default (TeaCache 0.26, MagCache the "
                                       "table's 0.12/0.24, adaptive 0.2). 0 = never skip (same output as without the node)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Never skip before this fraction of the steps. Each method keeps its own warm-up "
                                       "too (TeaCache: 5 steps in e0 mode, 1 in e mode; MagCache: 20%; adaptive: 15%)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Never skip from this fraction of the steps on. The last step is always computed."),
                io.Combo.Input("cache_device", options=["gpu", "cpu"], default="gpu",
                               tooltip="Where the cached residuals live (one per CFG pass, ~100 MB each for 1.3B at "
                                       "480p, ~330 MB for 14B). cpu saves VRAM at the cost of a copy per skipped step."),
                io.Boolean.Input("verbose", default=False, tooltip="Log every step's decision and the quantity it was based on."),
                io.Combo.Input("variant", options=["auto", *tables.VARIANTS], default="auto", optional=True,
                               tooltip="Which coefficient table to use. auto picks it from the loaded model (I2V: 480p "
                                       "or 720p from the latent size). Override only for a fine-tune of a listed model."),
                io.Combo.Input("teacache_mode", options=["e0", "e"], default="e0", optional=True,
                               tooltip="TeaCache input: e0 = the time projection (LightX2V's default, first 5 steps "
                                       "computed), e = the timestep embedding (first step computed)."),
                io.String.Input("calibration_file", default="", optional=True,
                                tooltip="MagCache calibration name in models/magcache (no extension). magcache-calibrate "
                                        "saves to it (empty: named after the model); magcache loads it instead of the "
                                        "built-in table (empty: built-in table)."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the cache attached; connect it to any sampler.")],
        )

    @classmethod
    def run(cls, model, method, threshold, start_percent, end_percent, cache_device, verbose,
            variant="auto", teacache_mode="e0", calibration_file=""):
        settings = CacheSettings(method=method, threshold=threshold, start_percent=start_percent,
                                 end_percent=end_percent, cache_device=cache_device, verbose=verbose,
                                 variant=variant, teacache_mode=teacache_mode)
        return io.NodeOutput(apply_feature_cache(model, settings, calibration_file))


NODES = [FeatureCache]
