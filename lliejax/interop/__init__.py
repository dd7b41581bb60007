"""PyTorch interop: checkpoint files, key maps between official networks and lliejax params, parity checks.

* :mod:`~lliejax.interop.torch_io`: ``.pth`` (weights only) and Lightning ``.ckpt`` reading, ``.pth`` writing;
* :mod:`~lliejax.interop.keymap`: the naming rule, layouts and the generic import / export of a key-map spec;
* :mod:`~lliejax.interop.nafnet`: the ConditionalNAFNet spec and architecture inference;
* :mod:`~lliejax.interop.reddit`: the SR3 UNet spec of ReDDiT / GSAD (``GaussianDiffusion`` state_dicts);
* :mod:`~lliejax.interop.anlightendiff`: AnlightenDiff's three networks in its Lightning state dicts;
* :mod:`~lliejax.interop.convert`: checkpoint files <-> lliejax exports (``lliejax convert``);
* :mod:`~lliejax.interop.crosscheck`: numerical parity with the official code (``lliejax crosscheck``), with
  :mod:`~lliejax.interop.crosscheck_reddit` (ReDDiT) and :mod:`~lliejax.interop.crosscheck_anlightendiff`
  (AnlightenDiff, whose official modules it also loads for the tests);
* :mod:`~lliejax.interop.torch_nafnet`: a PyTorch ConditionalNAFNet transcription for checks without a checkout
  (importing it imports torch).

Nothing here imports torch until a file is read or written or a parity check runs.
"""
