"""Reading embeddings files, trial lists and score files: exact contents and error messages."""
import h5py
import numpy
import pytest

from bob.learn.pytorch.score_files import (
    ScoreProvenance, Trial, all_pairs, read_embeddings, read_scores, read_trials, subject_of, template_embedding,
    write_scores,
)


def test_hdf5_datasets_of_another_width_such_as_time_stamps_are_not_embeddings(tmp_path):
    path = tmp_path / "e.h5"
    with h5py.File(path, "w") as hdf5:
        hdf5.attrs["network"] = "resnet34"
        hdf5.create_dataset("alice/a", data=numpy.ones((2, 4), numpy.float32))
        hdf5.create_dataset("alice/a_times", data=numpy.zeros((2, 2)))
        hdf5.create_dataset("b", data=numpy.full((1, 4), 2.0, numpy.float32))
        hdf5.create_dataset("labels", data=numpy.arange(3))
    table = read_embeddings(path)
    assert list(table.rows) == ["alice/a", "b"] and table.width == 4
    assert table.attributes["network"] == "resnet34"
    assert table.rows["alice/a"].dtype == numpy.float64 and table.rows["alice/a"].shape == (2, 4)


def test_csv_rows_group_by_name_and_other_columns_are_skipped(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("name,chunk,start_s,end_s,e0,e1\na,0,0.0,3.0,1,0\na,1,1.5,4.5,0,1\nb,0,0.0,2.0,3,4\n")
    table = read_embeddings(path)
    numpy.testing.assert_array_equal(table.rows["a"], [[1, 0], [0, 1]])
    numpy.testing.assert_array_equal(table.rows["b"], [[3, 4]])


def test_npy_rows_are_named_by_their_name_field(tmp_path):
    records = numpy.zeros(3, dtype=[("name", "U8"), ("chunk", "i8"), ("embedding", "f4", (2,))])
    records["name"] = ["x", "y", "x"]
    records["embedding"] = numpy.arange(6, dtype=numpy.float32).reshape(3, 2)
    numpy.save(tmp_path / "e.npy", records)
    table = read_embeddings(tmp_path / "e.npy")
    numpy.testing.assert_array_equal(table.rows["x"], [[0, 1], [4, 5]])
    numpy.testing.assert_array_equal(table.rows["y"], [[2, 3]])
    numpy.save(tmp_path / "e.npy", numpy.arange(6, dtype=numpy.float32).reshape(3, 2))
    with pytest.raises(ValueError, match="e.npy is not a record array with the fields 'name' and 'embedding'"):
        read_embeddings(tmp_path / "e.npy")


def test_unknown_embeddings_format_is_refused(tmp_path):
    (tmp_path / "e.txt").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the embeddings format from '.txt'; use the .h5, .npy or .csv"):
        read_embeddings(tmp_path / "e.txt")


def test_template_is_the_renormalised_mean_of_unit_rows():
    numpy.testing.assert_allclose(template_embedding(numpy.array([[3.0, 0.0], [0.0, 0.5]])), [2**-0.5, 2**-0.5])
    with pytest.raises(ValueError, match="the rows cancel out"):
        template_embedding(numpy.array([[1.0, 0.0], [-2.0, 0.0]]))


def test_trial_list_with_comments_and_labels(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("# header\n\na b target\na c nontarget\n")
    assert read_trials(path) == [Trial("a", "b", True), Trial("a", "c", False)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a b c d\n", r"t.txt, line 1: expected 'enrolment-key probe-key \[target\|nontarget\]', got 4 fields"),
        ("a b yes\n", r"t.txt, line 1: the label must be 'target' or 'nontarget', got 'yes'"),
        ("a b target\na c\n", "some trials have a target/nontarget label and others not; label all or none"),
        ("a b\na b\n", "lists the trial a b twice"),
        ("a a nontarget\n", "t.txt, line 1: a against itself cannot be a nontarget trial"),
        ("# nothing\n", "lists no trial"),
    ],
)
def test_bad_trial_lists_are_refused(tmp_path, text, message):
    (tmp_path / "t.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_trials(tmp_path / "t.txt")


def test_all_pairs_and_subjects():
    assert all_pairs(["a", "b", "c"]) == [Trial("a", "b"), Trial("a", "c"), Trial("b", "c")]
    assert [subject_of(key) for key in ("alice/take1", "x/alice/take1", "take1")] == ["alice", "alice", "take1"]


def test_score_file_round_trip_and_bob_s_own_files(tmp_path):
    trials = [Trial("a", "b", True), Trial("a", "c", False)]
    provenance = ScoreProvenance("dltresnet34", None, "as-norm", 40, 10)
    write_scores(tmp_path / "s.csv", trials, numpy.array([0.5, -0.25]), provenance)
    assert (tmp_path / "s.csv").read_text() == (
        "probe_template_id,probe_subject_id,bio_ref_template_id,bio_ref_subject_id,score,network,model_sha256,norm,"
        "cohort_size,top_n\nb,a,a,a,0.5,dltresnet34,,as-norm,40,10\nc,c,a,a,-0.25,dltresnet34,,as-norm,40,10\n"
    )
    table = read_scores(tmp_path / "s.csv")
    assert table.provenance == provenance
    numpy.testing.assert_array_equal(table.targets, [True, False])
    (tmp_path / "bob.csv").write_text(
        "probe_template_id,probe_subject_id,bio_ref_template_id,bio_ref_subject_id,score\np,x,r,x,1.5\n"
    )
    assert read_scores(tmp_path / "bob.csv").provenance == ScoreProvenance()
    (tmp_path / "bad.csv").write_text("a,score\n1,2\n")
    with pytest.raises(ValueError, match="is not a CSV score file: no column probe_subject_id, bio_ref_subject_id"):
        read_scores(tmp_path / "bad.csv")
