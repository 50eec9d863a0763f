"""Labels of the user's evaluation data as class ids: ids, the model's label names, image sub-folder names in
ImageFolder's sorted order; labels that name no class skip accuracy with a note instead of stopping the run."""
import numpy as np

from nnslim.testbeds.classifier import _label_ids

CONFIG = {"id2label": {"0": "NEG", "1": "POS", "2": "MIX"}, "label2id": {"NEG": 0, "POS": 1, "MIX": 2}}


def test_ids_and_label_names():
    assert _label_ids([0, "2", "POS", np.int64(1)], CONFIG).tolist() == [0, 2, 1, 1]
    assert _label_ids(None, CONFIG) is None and _label_ids([0, None], CONFIG) is None


def test_folder_names_count_in_sorted_order(capsys):
    ids = _label_ids(["dog", "cat", "dog", "bird"], CONFIG, by_folder=True)
    assert ids.tolist() == [2, 1, 2, 0]  # bird, cat, dog
    assert "ImageFolder" in capsys.readouterr().err
    assert _label_ids(["a", "b", "c", "d"], CONFIG, by_folder=True) is None  # more folders than classes


def test_unknown_text_labels_skip_accuracy(capsys):
    assert _label_ids(["positive", "negative"], CONFIG) is None
    assert "accuracy is not computed" in capsys.readouterr().err
