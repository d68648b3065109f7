"""Weight-space merges that need no evaluator, one per module: uniform (and weighted)
averages, task arithmetic, TIES, DARE, DELLA, Model Breadcrumbs, SLERP, NuSLERP,
Multi-SLERP, NearSwap, SCE, Karcher, RAM, RAM+, Arcee Fusion, Model Stock, passthrough
and WiSE-FT; `per_tensor.per_tensor` runs any of them with parameters that vary by
tensor (gradients, filters). `registry.MERGES` is the table the CLI, `compare` and
mergekit configs follow; `tune` is the held-out search over a merge's parameters.

Each merge is a function of the module of its name (`modelsoup.merges.ties.ties`,
`modelsoup.merges.dare.dare`, ...), and every one is exported by `modelsoup` itself
(``ms.ties``). This package does not re-export them, so that
``modelsoup.merges.ties`` is always the module and never the function it holds."""
