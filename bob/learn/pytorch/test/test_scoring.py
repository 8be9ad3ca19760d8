"""S-norm and AS-norm: the arithmetic against plain-loop references, its properties, bob's pipeline.

The embeddings are synthetic, drawn from a known model (speaker directions on
the sphere plus Gaussian noise), so every expected number is computed here
independently of the package, by loops over Python floats.
"""
import math

import numpy
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from bob.learn.pytorch import scoring

# Float64 loops against vectorised float64: they differ by rounding only.
ATOL = 1e-12


def synthetic_embeddings(rng, speakers: int, per_speaker: int, dim: int = 16, noise: float = 0.6) -> numpy.ndarray:
    """``speakers * per_speaker`` rows: a random unit direction per speaker plus isotropic Gaussian noise."""
    centres = rng.standard_normal((speakers, dim))
    centres /= numpy.linalg.norm(centres, axis=1, keepdims=True)
    rows = numpy.repeat(centres, per_speaker, axis=0) + noise * rng.standard_normal((speakers * per_speaker, dim))
    return rows


def loop_cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def loop_stats(values, top_n=None):
    kept = sorted(values, reverse=True)[:top_n] if top_n else list(values)
    mean = sum(kept) / len(kept)
    return mean, math.sqrt(sum((value - mean) ** 2 for value in kept) / len(kept))


def loop_s_norm(scores, enrol_cohort, probe_cohort, top_n=None):
    enrol = [loop_stats(row, top_n) for row in enrol_cohort]
    probe = [loop_stats(row, top_n) for row in probe_cohort]
    return [
        [((scores[e][p] - enrol[e][0]) / enrol[e][1] + (scores[e][p] - probe[p][0]) / probe[p][1]) / 2
         for p in range(len(probe))]
        for e in range(len(enrol))
    ]


@pytest.fixture(scope="module")
def trial_arrays():
    """Raw cosine scores and both sides' cohort scores of synthetic enrolments, probes and cohort."""
    rng = numpy.random.default_rng(28)
    enrol = synthetic_embeddings(rng, 5, 1)
    probes = synthetic_embeddings(rng, 4, 2)
    cohort = synthetic_embeddings(rng, 30, 1)
    loops = lambda first, second: [[loop_cosine(a, b) for b in second] for a in first]  # noqa: E731
    return {
        "embeddings": (enrol, probes, cohort),
        "scores": numpy.array(loops(enrol, probes)),
        "enrol_cohort": numpy.array(loops(enrol, cohort)),
        "probe_cohort": numpy.array(loops(probes, cohort)),
    }


@pytest.mark.parametrize("top_n", [None, 2, 7, 29])
def test_s_norm_matches_a_plain_loop_reference(trial_arrays, top_n):
    a = trial_arrays
    expected = loop_s_norm(a["scores"].tolist(), a["enrol_cohort"].tolist(), a["probe_cohort"].tolist(), top_n)
    result = scoring.s_norm(a["scores"], a["enrol_cohort"], a["probe_cohort"], top_n=top_n)
    assert result.shape == (5, 8) and result.dtype == numpy.float64
    numpy.testing.assert_allclose(result, expected, rtol=0, atol=ATOL)


def test_s_norm_is_symmetric_in_enrolment_and_probe(trial_arrays):
    a = trial_arrays
    for top_n in (None, 10):
        forward = scoring.s_norm(a["scores"], a["enrol_cohort"], a["probe_cohort"], top_n)
        swapped = scoring.s_norm(a["scores"].T, a["probe_cohort"], a["enrol_cohort"], top_n)
        numpy.testing.assert_allclose(forward, swapped.T, rtol=0, atol=ATOL)


def test_as_norm_over_the_whole_cohort_is_s_norm(trial_arrays):
    a = trial_arrays
    whole = scoring.s_norm(a["scores"], a["enrol_cohort"], a["probe_cohort"])
    adaptive = scoring.s_norm(a["scores"], a["enrol_cohort"], a["probe_cohort"], top_n=30)
    numpy.testing.assert_allclose(adaptive, whole, rtol=0, atol=ATOL)
    assert not numpy.allclose(scoring.s_norm(a["scores"], a["enrol_cohort"], a["probe_cohort"], top_n=29), whole)


@pytest.mark.parametrize("chunk_rows", [1, 3, 8, 100])
def test_chunked_cohort_statistics_equal_the_loop_statistics(trial_arrays, chunk_rows):
    _, probes, cohort = trial_arrays["embeddings"]
    for top_n in (None, 5):
        stats = scoring.cohort_statistics(probes, cohort, top_n=top_n, chunk_rows=chunk_rows)
        expected = numpy.array([loop_stats(row, top_n) for row in trial_arrays["probe_cohort"].tolist()])
        numpy.testing.assert_allclose(stats.mean, expected[:, 0], rtol=0, atol=ATOL)
        numpy.testing.assert_allclose(stats.std, expected[:, 1], rtol=0, atol=ATOL)


def test_cosine_scores_match_the_loop_cosine(trial_arrays):
    enrol, probes, _ = trial_arrays["embeddings"]
    numpy.testing.assert_allclose(scoring.cosine_scores(enrol, probes), trial_arrays["scores"], rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: (a["scores"][:, :3], a["enrol_cohort"], a["probe_cohort"], None),
         r"shapes do not match: scores \(5, 3\) is \(E, P\), so enrol_cohort_scores must be \(E, C\) and "
         r"probe_cohort_scores \(P, C\) with one cohort size C; got \(5, 30\) and \(8, 30\)"),
        (lambda a: (a["scores"], a["enrol_cohort"][:, :20], a["probe_cohort"], None), "shapes do not match"),
        (lambda a: (a["scores"], a["enrol_cohort"], a["probe_cohort"], 1),
         r"top_n must be an integer from 2 \(a standard deviation needs two scores\) to the cohort size 30, got 1"),
        (lambda a: (a["scores"], a["enrol_cohort"], a["probe_cohort"], 31), "to the cohort size 30, got 31"),
        (lambda a: (a["scores"], a["enrol_cohort"], a["probe_cohort"], True), "got True"),
        (lambda a: (a["scores"], a["enrol_cohort"], a["probe_cohort"], 2.0), "got 2.0"),
        (lambda a: (a["scores"][0], a["enrol_cohort"], a["probe_cohort"], None),
         r"scores must be a 2-D array, got shape \(8,\)"),
        (lambda a: (numpy.where(numpy.eye(5, 8) > 0, numpy.nan, a["scores"]), a["enrol_cohort"], a["probe_cohort"],
                    None), "scores holds NaN or infinite values"),
        (lambda a: (a["scores"], numpy.ones((5, 30)), a["probe_cohort"], None),
         r"enrol_cohort_scores: row 0 has all its cohort scores equal \(standard deviation 0\)"),
    ],
)
def test_bad_input_is_refused_before_any_work(trial_arrays, change, message):
    with pytest.raises(ValueError, match=message):
        scoring.s_norm(*change(trial_arrays))


def test_cohort_embeddings_of_another_width_are_refused(trial_arrays):
    _, probes, cohort = trial_arrays["embeddings"]
    with pytest.raises(ValueError, match="embeddings have 16 dimensions but cohort 8: they come from different networks"):
        scoring.cohort_statistics(probes, cohort[:, :8])
    with pytest.raises(ValueError, match="cohort embeddings: row 2 is all zeros"):
        scoring.cohort_statistics(probes, numpy.where(numpy.arange(30)[:, None] == 2, 0.0, cohort))


# -- inside bob.bio.base's score-normalisation pipeline -----------------------------------------


def bob_samples(embeddings: numpy.ndarray, prefix: str):
    """One SampleSet per row (template_id ``<prefix><i>``), its single sample holding the row."""
    from bob.pipelines import Sample, SampleSet

    return [
        SampleSet([Sample(row, key=f"{prefix}{i}", subject_id=f"{prefix}{i}")], template_id=f"{prefix}{i}",
                  subject_id=f"{prefix}{i}", key=f"{prefix}{i}")
        for i, row in enumerate(embeddings)
    ]


def bob_pipeline():
    from bob.bio.base.algorithm import Distance
    from bob.bio.base.pipelines import PipelineSimple
    from bob.pipelines import wrap

    identity = wrap(["sample"], FunctionTransformer(lambda rows: [numpy.asarray(row) for row in rows]))
    return PipelineSimple(make_pipeline(identity), Distance())


@pytest.mark.parametrize("post_processor, top_n", [(scoring.SNormScores(), None), (scoring.ASNormScores(top_n=6), 6)])
def test_post_processor_in_bob_s_pipeline_equals_s_norm_of_the_arrays(trial_arrays, post_processor, top_n):
    enrol, probes, cohort = trial_arrays["embeddings"]
    references, probe_sets = bob_samples(enrol, "e"), bob_samples(probes, "p")
    for probe in probe_sets:
        probe.references = [reference.template_id for reference in references]
    pipeline = scoring.PipelineScoreSNorm(bob_pipeline(), post_processor)
    raw, normalised = pipeline([], references, probe_sets, bob_samples(cohort, "c"), score_all_vs_all=True)

    def matrix(score_sets):
        return numpy.array([[score.data for score in probe_set] for probe_set in score_sets]).T

    a = trial_arrays
    # bob's Distance scores -(1 - cosine), a shift that S-norm removes
    numpy.testing.assert_allclose(matrix(raw), a["scores"] - 1, rtol=0, atol=1e-12)
    expected = loop_s_norm(a["scores"].tolist(), a["enrol_cohort"].tolist(), a["probe_cohort"].tolist(), top_n)
    numpy.testing.assert_allclose(matrix(normalised), expected, rtol=0, atol=1e-9)
    first = normalised[0][0]
    assert (first.template_id, normalised[0].template_id) == ("e0", "p0"), "scores keep their metadata"


def test_post_processor_names_an_enrolment_it_was_not_fitted_for(trial_arrays):
    from bob.pipelines import Sample, SampleSet

    enrol, probes, cohort = trial_arrays["embeddings"]
    normaliser = scoring.SNormScores().fit(
        [SampleSet([Sample(0.1 * i, template_id="e0"), Sample(0.3 * i * i, template_id="e1")]) for i in range(3)],
        [SampleSet([Sample(0.1 * i) for i in range(3)], template_id="p0")],
    )
    with pytest.raises(ValueError, match="no cohort statistics for enrolment 'e7': fit on the cohort scores"):
        normaliser.transform([SampleSet([Sample(0.5, template_id="e7")], template_id="p0")])
