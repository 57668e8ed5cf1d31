"""One typed reader per pipeline artifact read by more than one stage or tool, each taking the ``Drops``.

One module per artifact (``sample``, ``candidates``, ``scores`` with the judgments, ``labels``, ``curated``) on
the shared line reader ``lines``; this package imports none of them, so a stage depends (``vital dag``) only on
the readers it uses: an edit to the labels reader reruns no tune.

Every reader applies one rule per problem, under one drop name, wherever the artifact is read:

- a missing file is fatal: ``FileNotFoundError`` naming the file and the stage that writes it;
- a line that is not JSON, not UTF-8, or not a valid record is dropped as ``bad_line`` (where: ``file:line``);
- a file with no usable record at all is fatal: ``RecordError`` naming the file and the first drops
  (except clinician labels: without them the pairs are the judge's alone, which the pairs stage warns about).

The rules particular to each artifact are in its reader's docstring. A stage that ends up with nothing
after its own checks still fails on one line; that is the stage's business, not the reader's.
"""
