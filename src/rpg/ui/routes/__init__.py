"""The editor's JSON API, one module per concern, each a class of handlers over one
:class:`~rpg.ui.editor.Editor`: :mod:`~rpg.ui.routes.plan` (planning and plan edits),
:mod:`~rpg.ui.routes.render` (the render queue) and :mod:`~rpg.ui.routes.files` (PNG and mask
uploads, rendered PNGs). :func:`rpg.ui.app.build_app` maps the paths to them.
"""
