"""The feature browser: a small FastAPI app over one warehouse, read-only.

Pages (server-side Jinja2 templates, autoescaped: labels are written by a model and are shown as
text, never as markup) and a JSON API with the same data:

    /                      SAEs: features labelled, flagged, last run        /api/saes
    /features?release&sae_id&q&flagged&rt_min&rt_max&density_min&density_max&det_min&det_max&sort&desc&page
                           one SAE's feature table, searched, filtered, paged /api/features
    /feature?release&sae_id&feature
                           one feature: label, candidates, sweep, contexts     /api/feature
    /evaluation            the latest evaluation of each suite               /api/evaluation

Each request opens the warehouse read-only and closes it before answering, so a relabel run can
take the writer's lock between requests; while a writer holds it, pages read the snapshot that
the last run published (and say so).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from selfexplain.browse import queries
from selfexplain.browse.charts import sweep_svg
from selfexplain.warehouse import Warehouse
from selfexplain.warehouse_read import open_reader

TEMPLATES = Path(__file__).parent / "templates"


def feature_filter(
    q: str = Query("", max_length=200),
    flagged: str = Query("any", pattern="^(any|yes|no)$"),
    rt_min: float | None = None, rt_max: float | None = None,
    density_min: float | None = Query(None, ge=0), density_max: float | None = Query(None, ge=0),
    det_min: float | None = Query(None, ge=0, le=1), det_max: float | None = Query(None, ge=0, le=1),
    sort: str = Query("feature", pattern="^(" + "|".join(queries.SORTS) + ")$"),
    desc: bool = False,
    page: int = Query(1, ge=1),
    size: int = Query(queries.PAGE_SIZE, ge=1, le=queries.MAX_PAGE_SIZE),
) -> queries.FeatureFilter:
    """The feature table's query parameters, validated (a bad one is a 400 naming it)."""
    return queries.FeatureFilter(
        q=q.strip(), flagged={"yes": True, "no": False}.get(flagged), rt_min=rt_min,
        rt_max=rt_max, density_min=density_min, density_max=density_max, det_min=det_min,
        det_max=det_max, sort=sort, desc=desc,
        page=page, size=size)


class NotFound(Exception):
    """An unknown SAE or feature: a 404 page (or JSON) that says which."""


def create_app(warehouse: str | Path) -> FastAPI:
    """The browser app for the warehouse at `warehouse` (opened per request, read-only)."""
    path = str(Path(warehouse).expanduser().resolve())
    env = Environment(loader=FileSystemLoader(TEMPLATES),
                      autoescape=select_autoescape(["html"], default=True))
    app = FastAPI(title="selfexplain feature browser", docs_url=None, redoc_url=None)

    @contextmanager
    def reader() -> Iterator[Warehouse]:
        wh = open_reader(path)
        try:
            yield wh
        finally:
            wh.close()

    def page(template: str, status: int = 200, **context: object) -> HTMLResponse:
        html = env.get_template(template).render(warehouse=path, **context)
        return HTMLResponse(html, status_code=status)

    def api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    @app.exception_handler(NotFound)
    async def not_found(request: Request, err: NotFound) -> Response:
        if api(request):
            return JSONResponse({"error": str(err)}, status_code=404)
        return page("error.html", status=404, title="Not found", message=str(err))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError) -> Response:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        message = f"bad parameter {where}: {first.get('msg', 'invalid')}"
        if api(request):
            return JSONResponse({"error": message}, status_code=400)
        return page("error.html", status=400, title="Bad request", message=message)

    def sae_list() -> tuple[list[dict], str | None]:
        with reader() as wh:
            return queries.saes(wh), wh.note

    def feature_table(release: str, sae_id: str, filt: queries.FeatureFilter) -> dict:
        with reader() as wh:
            sae = queries.sae(wh, release, sae_id)
            if sae is None:
                raise NotFound(f"no labelled SAE {release}/{sae_id} in this warehouse")
            rows, total = queries.features(wh, release, sae_id, filt)
            note = wh.note
        pages = max(1, -(-total // filt.size))
        return dict(sae=sae, rows=rows, total=total, page=filt.page, pages=pages, note=note)

    def feature_detail(release: str, sae_id: str, index: int) -> dict:
        with reader() as wh:
            if queries.sae(wh, release, sae_id) is None:
                raise NotFound(f"no labelled SAE {release}/{sae_id} in this warehouse")
            detail = queries.feature(wh, release, sae_id, index)
            note = wh.note
        if detail is None:
            raise NotFound(f"feature {index} of {release}/{sae_id} has no label in this warehouse")
        return dict(detail, note=note)

    @app.get("/", response_class=HTMLResponse)
    def home() -> HTMLResponse:
        rows, note = sae_list()
        return page("saes.html", title="SAEs", saes=rows, note=note)

    @app.get("/api/saes")
    def api_saes() -> JSONResponse:
        rows, _note = sae_list()
        return JSONResponse(queries.jsonable(rows))

    @app.get("/features", response_class=HTMLResponse)
    def features_page(request: Request, release: str, sae_id: str,
                      filt: queries.FeatureFilter = Depends(feature_filter)) -> HTMLResponse:
        data = feature_table(release, sae_id, filt)
        flagged = {True: "yes", False: "no"}.get(filt.flagged, "any")  # type: ignore[arg-type]
        return page("features.html", title=f"{release}/{sae_id}", filt=filt, flagged=flagged,
                    query=dict(request.query_params), sorts=list(queries.SORTS), **data)

    @app.get("/api/features")
    def api_features(release: str, sae_id: str,
                     filt: queries.FeatureFilter = Depends(feature_filter)) -> JSONResponse:
        data = feature_table(release, sae_id, filt)
        return JSONResponse(queries.jsonable({k: v for k, v in data.items() if k != "note"}))

    @app.get("/feature", response_class=HTMLResponse)
    def feature_page(release: str, sae_id: str, feature: int = Query(..., ge=0)) -> HTMLResponse:
        data = feature_detail(release, sae_id, feature)
        chosen: dict[str, list[float]] = {}
        for cand in data["candidates"]:
            if cand["chosen"]:
                chosen.setdefault(cand["prompt"], []).append(cand["scale"])
        return page("feature.html", title=f"feature {feature}", release=release, sae_id=sae_id,
                    feature=feature, chart=sweep_svg(data["sweep"], chosen), **data)

    @app.get("/api/feature")
    def api_feature(release: str, sae_id: str, feature: int = Query(..., ge=0)) -> JSONResponse:
        data = feature_detail(release, sae_id, feature)
        return JSONResponse(queries.jsonable({k: v for k, v in data.items() if k != "note"}))

    @app.get("/evaluation", response_class=HTMLResponse)
    def evaluation_page() -> HTMLResponse:
        with reader() as wh:
            rows, note = queries.evaluations(wh), wh.note
        return page("evaluation.html", title="Evaluation", rows=rows, note=note)

    @app.get("/api/evaluation")
    def api_evaluation() -> JSONResponse:
        with reader() as wh:
            return JSONResponse(queries.jsonable(queries.evaluations(wh)))

    @app.exception_handler(404)
    async def unknown_path(request: Request, _err: Exception) -> Response:
        if api(request):
            return JSONResponse({"error": f"no page {request.url.path}"}, status_code=404)
        return page("error.html", status=404, title="Not found",
                    message=f"no page {request.url.path}")

    return app
