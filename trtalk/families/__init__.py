"""Model families: one package per family (`pcavs`, `pdfgc`, `warp`), each with its networks'
composition, checkpoints, stages and runtime adapter, described by one `spec.FamilySpec`;
`registry` finds them, with third-party families from the ``trtalk.families`` entry points.
The interface the frame step drives is `base.ModelFamily` (the networks, shared by every stream)
with each stream's `base.FamilyState`.
"""
