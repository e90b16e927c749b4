"""Tests of run_cases.py itself: it refuses every file in
plugins/testing/mirror/invalid-cases.json with the error the other three
runners give, and a wrong expectation fails.

    python3 plugins/python/test_run_cases.py

`scripts/build-plugins --check` runs it. The runs need componentize-py on
PATH for the bindings.
"""

import os
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run_cases  # noqa: E402
from sluice_guest import dump_json, parse_json  # noqa: E402

MIRROR = os.path.join(HERE, "mirror")
INVALID = os.path.join(HERE, "..", "testing", "mirror", "invalid-cases.json")


class Refusals(unittest.TestCase):
    def test_every_invalid_file_is_refused_with_the_shared_error(self):
        with open(INVALID, encoding="utf-8") as f:
            listed = parse_json(f.read())["invalid"]
        self.assertTrue(listed)
        for item in listed:
            with self.subTest(item["what"]):
                with self.assertRaises(run_cases.CasesError) as caught:
                    run_cases.load_cases(dump_json(item["file"]).decode("utf-8"))
                self.assertTrue(
                    str(caught.exception).startswith(item["error"]),
                    f"{caught.exception!s} does not start with {item['error']}",
                )

    def test_numbers_compare_by_kind(self):
        self.assertTrue(run_cases.same_json({"a": [1, 2.5]}, {"a": [1, 2.5]}))
        self.assertFalse(run_cases.same_json(1, 1.0))
        self.assertFalse(run_cases.same_json(True, 1))
        self.assertFalse(run_cases.same_json({"a": 1}, {"a": 1, "b": 2}))


class Runs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        run_cases.bindings_dir(cls.tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_text(self, text):
        return run_cases.run_cases(MIRROR, run_cases.load_cases(text))

    def test_a_right_expectation_passes_and_a_wrong_one_fails(self):
        case = (
            '{"cases": [{"name": "w", "input": {"subject": "s", "payload_base64": "AP8="}, '
            '"expect": {"verdict": "next", "message": {"subject": "s", "payload_base64": "%s"}}}]}'
        )
        self.assertEqual(self.run_text(case % "AP8="), [])
        failures = self.run_text(case % "AP4=")
        self.assertEqual(len(failures), 1, failures)
        self.assertTrue(failures[0].startswith('case "w": expected payload'), failures)

    def test_a_missing_expected_payload_means_empty(self):
        case = (
            '{"cases": [{"name": "e", "input": {"subject": "s", "payload": "x"}, '
            '"expect": {"verdict": "next", "message": {"subject": "s"}}}]}'
        )
        self.assertEqual(len(self.run_text(case)), 1)


if __name__ == "__main__":
    unittest.main(verbosity=1)
