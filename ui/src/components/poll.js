import { useEffect, useRef, useState } from 'preact/hooks';

/**
 * Calls load() now and then every `seconds` while the component is shown (and the tab is
 * visible); a slow answer is never overtaken by the next call. Returns {data, error, reload}.
 */
export function usePoll(load, seconds, deps) {
  const [state, setState] = useState({ data: null, error: null });
  const tick = useRef(0);
  const reload = useRef(() => {});
  useEffect(() => {
    let stopped = false;
    let timer = null;
    const run = async () => {
      clearTimeout(timer);
      const mine = ++tick.current;
      try {
        const data = await load();
        if (!stopped && mine === tick.current) setState({ data, error: null });
      } catch (error) {
        if (!stopped && mine === tick.current) setState((s) => ({ data: s.data, error }));
      }
      if (!stopped && seconds) timer = setTimeout(run, document.hidden ? seconds * 4000 : seconds * 1000);
    };
    reload.current = run;
    run();
    return () => { stopped = true; clearTimeout(timer); };
  }, deps);
  return { ...state, reload: () => reload.current() };
}
