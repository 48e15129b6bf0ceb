"""``otaro bench``: speed, memory and accuracy per SEFP precision against fp32 and llama.cpp.

Modules, one job each:

* :mod:`.configs`   -- what is measured (artifact variants, precisions, run sizes);
* :mod:`.artifacts` -- export each artifact variant once into a cache directory;
* :mod:`.worker`    -- measure ONE configuration in its own child process (clean RSS);
* :mod:`.interleave` -- every configuration loaded once, timed in interleaved rounds (drift-robust ratios);
* :mod:`.switching` -- the cost of changing precision between calls;
* :mod:`.accuracy`  -- perplexity / KL to FP per precision via ``otaro eval``'s library;
* :mod:`.report`    -- ratios (paired per round), the printed table, JSON and PNG plots;
* :mod:`.runner`    -- runs it all in one process tree, on one machine, same threads.
"""
