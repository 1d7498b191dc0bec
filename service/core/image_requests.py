"""What both engine clients answer the same way on top of their own `infer_images`: classify (top-k,
with maps when asked), embed, explain (the map drawn over the photo), and the image-count check. The
in-process `Engine` (engine.py) and split mode's `RemoteEngine` (split/remote.py) inherit it."""

from __future__ import annotations

from collections.abc import Sequence

from service.core.call import AdmittedCall
from service.core.explain import EMBED, class_map, one_map, top_maps, with_maps
from service.core.outcomes import ClassifyOutcome, InferOutcome, classified
from service.errors import InvalidArgument
from service.preprocess.formats import DecodeLimits
from service.preprocess.images import PreprocessSpec
from service.preprocess.overlay import overlay_png
from service.preprocess.pool import PreprocessPool
from service.runtime.outputs import NOTHING, Wanted
from service.settings import Settings

DEFAULT_TOP_K = 5


class ImageRequests:
    settings: Settings
    pool: PreprocessPool
    limits: DecodeLimits

    async def infer_images(
        self, call: AdmittedCall, images: Sequence[bytes], wanted: Wanted = NOTHING
    ) -> InferOutcome:
        raise NotImplementedError

    async def classify(
        self, call: AdmittedCall, images: Sequence[bytes], *, explain: bool = False
    ) -> ClassifyOutcome:
        """Top-k per image; with `explain`, each prediction carries its class activation map."""
        k = call.target.top_k or DEFAULT_TOP_K
        outcome = await self.infer_images(call, images, top_maps(k) if explain else NOTHING)
        result = classified(outcome, k)
        return with_maps(result, outcome) if explain else result

    async def embed(self, call: AdmittedCall, images: Sequence[bytes]) -> InferOutcome:
        """The pooled features of each image (`outputs["features"]`), from the model that answered."""
        return await self.infer_images(call, images, EMBED)

    async def explain(
        self, call: AdmittedCall, image: bytes, class_id: int | None
    ) -> tuple[InferOutcome, int, bytes]:
        """The map of `class_id` (None: the best class) over the photo: (outcome, class id, PNG)."""
        outcome = await self.infer_images(call, [image], class_map(class_id))
        mapped, cam = one_map(outcome)
        assert outcome.model.spec is not None
        spec = PreprocessSpec.from_model_spec(outcome.model.spec)
        ((png, _),) = await self.pool.run(overlay_png, [(image, cam, spec, self.limits)])
        return outcome, mapped, png

    def _check_count(self, count: int) -> None:
        if count < 1:
            raise InvalidArgument("the request holds no image")
        if count > self.settings.max_images_per_request:
            raise InvalidArgument(
                f"{count} images in one request; at most {self.settings.max_images_per_request} are accepted"
            )
