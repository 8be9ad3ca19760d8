"""The dilated ResNet-34 on VoxCeleb after voice activity detection: ``bob bio pipeline simple -p dltresnet34-voxceleb-vad``.

The pipeline first labels each recording's speech with the package's energy
VAD (:class:`~bob.learn.pytorch.annotators.VoiceActivityAnnotator`, stored
as the samples' ``annotations``, as bob.bio.spear's ``Energy_2Gauss``
annotator does), then embeds only the speech frames, and scores by cosine
similarity::

    $ bob bio pipeline simple -p dltresnet34-voxceleb-vad -d my_database.py -o results

The model file is found as for ``dltresnet34-voxceleb``
(:mod:`bob.learn.pytorch.config.audio`). A recording with too little speech
(fewer than 37 frames) stops the pipeline with an error naming it.
"""
from sklearn.pipeline import make_pipeline

from bob.learn.pytorch.annotators import VoiceActivityAnnotator
from bob.learn.pytorch.bob_imports import Distance, PipelineSimple, wrap
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor
from bob.learn.pytorch.transformers import AudioEmbeddingTransformer

preprocessor = DltResNetExtractor()
transformer = make_pipeline(
    wrap(["sample"], VoiceActivityAnnotator("energy"), output_attribute="annotations"),
    wrap(["sample"], AudioEmbeddingTransformer(preprocessor, annotations_attribute="annotations")),
)
pipeline = PipelineSimple(transformer, Distance(distance_function="cosine", factor=-1))
